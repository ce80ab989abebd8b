"""Fixtures for the reward tests: a real HTTP server on 127.0.0.1 and paths of helper rewards."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

HELPERS = Path(__file__).parent / "helpers" / "misbehaving.py"


@pytest.fixture(scope="session")
def misbehaving():
    """`misbehaving("infinite_loop")` -> the reward name of that function in helpers/misbehaving.py
    (a `path/to/file.py:function` one-off, so worker processes can load it too)."""
    return lambda name: f"{HELPERS}:{name}"


BASIC_USER, BASIC_PASSWORD = "alice", "pa:ss/w@rd"


class ScoringHandler(BaseHTTPRequestHandler):
    """Endpoints, chosen by path:
    /score         batch protocol; score = 1.0 if the answer occurs in the response else 0.0; null (with a
                   reason) when the answer is null
    /slow          sleeps 2 s, then answers like /score
    /fail          HTTP 500 every time
    /flaky         HTTP 503 on the first request, then like /score
    /notfound      HTTP 404
    /malformed     200 with a body that is not JSON
    /wronglen      200 with one score too many
    /badscore      200 with a string score
    /v1/chat/completions   judge: "Score: 7" if the prompt contains "correct", "I cannot decide" if it
                   contains "garble", else "Score: 2"
    /judge_empty   judge endpoint that returns no choices
    /redirect      HTTP 302 to `server.redirect_to` (another server's /score)
    /echo_auth     HTTP 401 whose body echoes the Authorization header
    /basic         like /score when the request carries Basic auth for `BASIC_USER:BASIC_PASSWORD`, else
                   HTTP 401 echoing the Authorization header it got
    GET /score     {"scores": [9.0, 9.0]}: what a redirect followed as a GET would be handed
    """

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        with self.server.lock:
            self.server.hits["GET " + self.path] += 1
            self.server.requests.append(("GET " + self.path, dict(self.headers), b""))
        if self.path == "/score":
            return self._send(200, json.dumps({"scores": [9.0, 9.0]}))
        return self._send(404, "unknown path")

    def do_POST(self):
        server = self.server
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        with server.lock:
            server.hits[self.path] += 1
            server.requests.append((self.path, dict(self.headers), raw))
            hits = server.hits[self.path]
        body = json.loads(raw)
        if self.path == "/slow":
            time.sleep(2.0)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", server.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if self.path == "/echo_auth":
            return self._send(401, f"unauthorized: you sent {self.headers.get('Authorization')}")
        expected_basic = "Basic " + base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
        if self.path == "/basic" and self.headers.get("Authorization") != expected_basic:
            return self._send(401, f"unauthorized: you sent {self.headers.get('Authorization')}")
        if self.path in ("/score", "/slow", "/basic") or (self.path == "/flaky" and hits > 1):
            scores, reasons = [], []
            for sample in body["samples"]:
                if sample["answer"] is None:
                    scores.append(None)
                    reasons.append("no answer to compare with")
                else:
                    scores.append(1.0 if sample["answer"] in sample["response"] else 0.0)
                    reasons.append(None)
            return self._send(200, json.dumps({"scores": scores, "reasons": reasons}))
        if self.path == "/fail":
            return self._send(500, "internal error: scorer crashed")
        if self.path == "/flaky":
            return self._send(503, "warming up")
        if self.path == "/notfound":
            return self._send(404, "no such endpoint")
        if self.path == "/malformed":
            return self._send(200, "this is not json {")
        if self.path == "/wronglen":
            return self._send(200, json.dumps({"scores": [0.5] * (len(body["samples"]) + 1)}))
        if self.path == "/badscore":
            return self._send(200, json.dumps({"scores": ["high"] * len(body["samples"])}))
        if self.path == "/v1/chat/completions":
            prompt = body["messages"][0]["content"]
            if "garble" in prompt:
                reply = "I cannot decide."
            else:
                reply = "The response is fine.\nScore: 7" if "correct" in prompt else "Weak.\nScore: 2"
            return self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}))
        if self.path == "/judge_empty":
            return self._send(200, json.dumps({"choices": []}))
        return self._send(404, "unknown path")

    def _send(self, status: int, text: str):
        data = text.encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
            pass


def _start_server() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScoringHandler)
    server.daemon_threads = True
    server.lock = threading.Lock()
    server.hits = Counter()
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    return server


@pytest.fixture(scope="module")
def http_server():
    """Two real HTTP servers on 127.0.0.1 (random ports) in threads; yields the first, whose /redirect
    points at the second (`server.other`, standing in for another host)."""
    server, other = _start_server(), _start_server()
    server.other, server.redirect_to = other, other.base_url + "/score"
    yield server
    for each in (server, other):
        each.shutdown()
        each.server_close()
