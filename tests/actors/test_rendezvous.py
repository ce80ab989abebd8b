"""Listening sockets bind the node address: a store served on our own listener, interfaces pinned."""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psutil
import pytest

from actors.rendezvous import INTERFACE_VARIABLES, interface_of, open_listener, pin_interfaces, tcp_store

TIMEOUT = timedelta(seconds=20)


def listening_here() -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid == os.getpid()}


def test_the_store_listens_on_the_given_address_only_and_serves_clients():
    listener = open_listener("127.0.0.1")
    port = listener.getsockname()[1]
    with ThreadPoolExecutor(1) as pool:  # the master waits for every rank to join
        client = pool.submit(tcp_store, "127.0.0.1", port, 1, 2, TIMEOUT)
        master = tcp_store("127.0.0.1", port, 0, 2, TIMEOUT, listener)
        client.result().set("key", "value")
    assert master.get("key") == b"value"
    ours = {address for address in listening_here() if address[1] == port}
    assert ours == {("127.0.0.1", port)}  # not ('::', port): a plain TCPStore master binds all interfaces


def test_rank_zero_needs_its_own_listener():
    with pytest.raises(ValueError, match="rank 0 must serve the store on its own listener for port 1"):
        tcp_store("127.0.0.1", 1, 0, 2, TIMEOUT)
    listener = open_listener("127.0.0.1")
    with pytest.raises(ValueError, match="for port 2 "):
        tcp_store("127.0.0.1", 2, 0, 2, TIMEOUT, listener)  # a listener on another port
    listener.close()


def test_interface_of_an_address():
    assert interface_of("127.0.0.1") in {name for _, name in socket.if_nameindex()}
    with pytest.raises(ValueError, match=r"no network interface holds the address '203.0.113.7'; interfaces: .*lo"):
        interface_of("203.0.113.7")  # TEST-NET-3: on no machine


def test_pin_interfaces_keeps_a_users_choice(monkeypatch):
    loopback = interface_of("127.0.0.1")
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")
    pin_interfaces("127.0.0.1")
    assert {v: os.environ[v] for v in INTERFACE_VARIABLES} == {"GLOO_SOCKET_IFNAME": loopback,
                                                               "NCCL_SOCKET_IFNAME": "ib0"}
