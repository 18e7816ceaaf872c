"""Session-wide fixtures: one local Ray (num_cpus=2) and one moto S3 server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """A local Ray started once per test session with two CPUs."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
            # workers import the package and the examples the tests load as modules
            runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                [str(ROOT), str(ROOT / "examples")])}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API: moto's server on 127.0.0.1 (the way s3fs tests itself)."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A fresh bucket on the moto server; yields ``(s3://bucket, storage_options)``."""
    import s3fs

    options: dict[str, Any] = {
        "endpoint_url": s3_endpoint,
        "key": "testing",
        "secret": "testing",
    }
    fs = s3fs.S3FileSystem(**options)
    bucket = f"raykv-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    yield f"s3://{bucket}", options
    fs.invalidate_cache()
