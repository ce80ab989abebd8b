"""Listening sockets of a run: every one binds the node's own address (127.0.0.1 on a loopback cluster).

torch.distributed's `TCPStore` master binds all interfaces (`::`) whatever host it is given, and gloo and
NCCL pick their interface from the hostname. So the process that will host a store first opens a listening
socket on its node IP (`open_listener`; Ray's node IP is 127.0.0.1 when `cluster.loopback` is on, the
cluster address otherwise) and hands it to the store (`tcp_store`), and every process that joins a group
pins gloo's and NCCL's interface to the one holding its node IP (`pin_interfaces`) unless the user already
chose one (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME). docs/cluster.md, "Network exposure".
"""

from __future__ import annotations

import ipaddress
import os
import socket
from datetime import timedelta

import psutil
import torch.distributed as dist

INTERFACE_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def open_listener(host: str) -> socket.socket:
    """A TCP socket listening on (host, a free port); keep it until `tcp_store` takes it."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(128)
    return listener


def tcp_store(host: str, port: int, rank: int, world_size: int, timeout: timedelta,
              listener: socket.socket | None = None) -> dist.TCPStore:
    """The store of a group: rank 0 serves it on `listener` (from `open_listener`, which it consumes),
    the other ranks connect to (host, port)."""
    if rank == 0:
        if listener is None or listener.getsockname()[1] != port:
            raise ValueError(f"rank 0 must serve the store on its own listener for port {port} (open_listener)")
        return dist.TCPStore(host, port, world_size, is_master=True, timeout=timeout,
                             master_listen_fd=listener.detach())
    return dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)


def interface_of(host: str) -> str:
    """The name of the network interface that holds address `host` (e.g. 'lo' for 127.0.0.1)."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(address.address.split("%")[0] == host for address in addresses):
            return name
    raise ValueError(f"no network interface holds the address {host!r}; "
                     f"interfaces: {', '.join(sorted(psutil.net_if_addrs()))}")


def pin_interfaces(host: str) -> None:
    """Make gloo and NCCL listen on the interface holding `host`, unless the user set theirs."""
    name = interface_of(host)
    for variable in INTERFACE_VARIABLES:
        os.environ.setdefault(variable, name)
