"""A small fault-injecting HTTP proxy for object-storage tests.

A threaded HTTP/1.1 server on 127.0.0.1 that forwards every request to an upstream (the moto S3 server) and,
for a configurable share of requests, answers with a fault instead:

- "503":   `503 Slow Down` with an S3 XML error body (botocore retries it),
- "reset": the TCP connection is reset (SO_LINGER 0) before any response byte,
- "slow":  the upstream response is delayed by `slow_s` seconds, then delivered intact.

Faults are bounded (`max_faults`) so a retrying client always gets through, and deterministic (seeded RNG
or `every`-th request). Clients reach it by pointing `AWS_ENDPOINT_URL` at `proxy.url`. Counters
(`requests`, `faults`, per method) let tests assert how many requests a read needed.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
}

SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class FaultPlan:
    """Which requests fail. A request is eligible when its method is in `methods`; an eligible request
    fails with probability `rate` (seeded) or, when `every` > 0, when it is the every-th eligible one;
    at most `max_faults` faults in all. `kinds` are drawn in rotation."""

    rate: float = 0.0
    every: int = 0
    kinds: Sequence[str] = ("503", "reset", "slow")
    max_faults: int = 10
    slow_s: float = 1.0
    methods: Sequence[str] = ("GET", "HEAD")
    seed: int = 0
    paths: Sequence[str] = ()  # when set, only requests whose path contains one of these are eligible
    # requests whose path contains one of these ALWAYS fail with 503 (an unreachable object), any method; not
    # counted in `max_faults` nor drawn from the RNG, so the other requests see the same plan as without them
    always: Sequence[str] = ()


@dataclass
class FaultStats:
    requests: Counter[str] = field(default_factory=Counter)  # method -> count (faults included)
    faults: Counter[str] = field(default_factory=Counter)  # kind -> count
    refused: int = 0  # requests answered 503 by `FaultPlan.always`
    eligible: int = 0


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up (timeout) or a reset we injected: expected here, not worth a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class FaultProxy:
    def __init__(self, upstream: str, plan: FaultPlan | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.plan = plan or FaultPlan()
        self.stats = FaultStats()
        self._lock = threading.Lock()
        self._rng = random.Random(self.plan.seed)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- decisions
    def set_plan(self, plan: FaultPlan) -> None:
        """A new plan with fresh counters."""
        with self._lock:
            self.plan = plan
            self._rng = random.Random(plan.seed)
            self.stats = FaultStats()

    def _decide(self, method: str, path: str) -> str | None:
        with self._lock:
            self.stats.requests[method] += 1
            plan = self.plan
            if plan.always and any(p in path for p in plan.always):
                self.stats.refused += 1
                return "503"
            if method not in plan.methods or sum(self.stats.faults.values()) >= plan.max_faults:
                return None
            if plan.paths and not any(p in path for p in plan.paths):
                return None
            self.stats.eligible += 1
            hit = self.stats.eligible % plan.every == 0 if plan.every > 0 else self._rng.random() < plan.rate
            if not hit or not plan.kinds:
                return None
            kind = plan.kinds[sum(self.stats.faults.values()) % len(plan.kinds)]
            self.stats.faults[kind] += 1
            return kind

    # -- server
    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._body()
                kind = proxy._decide(self.command, self.path)
                if kind == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if kind == "503":
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN_BODY)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN_BODY)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                if body or "Content-Length" in self.headers or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    payload = resp.read()
                    resp_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_HEADERS]
                    status, reason = resp.status, resp.reason
                finally:
                    conn.close()
                if kind == "slow":
                    time.sleep(proxy.plan.slow_s)
                self.send_response(status, reason)
                for k, v in resp_headers:
                    if (
                        k.lower() != "content-length" or self.command == "HEAD"
                    ):  # HEAD: keep the object's size
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


@contextmanager
def fault_proxy(upstream: str, plan: FaultPlan | None = None) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, plan).start()
    try:
        yield proxy
    finally:
        proxy.stop()
