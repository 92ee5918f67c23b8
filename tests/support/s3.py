"""A real S3 server for tests: moto in server mode on 127.0.0.1, a free port, over HTTP (as s3fs's own
tests do). Clients reach it through the standard AWS environment variables only."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

S3_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reset(port: int) -> None:
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


@contextmanager
def s3_env(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Point this process's AWS clients at a server (`env` from moto_s3_server) while the block runs."""
    saved = {k: os.environ.get(k) for k in S3_ENV_KEYS}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def moto_s3_server(set_env: bool = True) -> Iterator[dict[str, str]]:
    """Start moto's threaded server; yield the env vars a client (or a Ray worker) needs (set in this
    process's environment while it runs, unless `set_env` is False: then use `s3_env`)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    # moto keeps its S3 state in process-wide backends shared by every server in this process: reset it so
    # each server starts empty (as s3fs's own tests do), whatever earlier tests created.
    _reset(port)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing-key",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        if set_env:
            with s3_env(env):
                yield env
        else:
            yield env
    finally:
        _reset(port)
        server.stop()
