from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.s3 import moto_s3_server

# Keep numerics single-threaded-ish and deterministic on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture()
def s3_server() -> Iterator[dict[str, str]]:
    """A fresh moto S3 server on 127.0.0.1 (HTTP) for one test; env vars set while it runs."""
    with moto_s3_server() as env:
        yield env


@pytest.fixture()
def s3fs_client(s3_server: dict[str, str]):
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["AWS_ENDPOINT_URL"]})
