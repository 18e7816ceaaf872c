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


_metrics_port: int | None = None  # set by ray_session when it starts Ray


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """A local Ray started once per test session with two CPUs.

    Its node's metrics agent serves Prometheus metrics on :func:`ray_metrics_port`.
    """
    import ray

    global _metrics_port
    if not ray.is_initialized():
        _metrics_port = _free_port()
        # workers import the package and the examples the tests load as modules: they
        # inherit PYTHONPATH from this process (the raylet starts as its child). A
        # runtime_env would start every worker through the runtime-env agent first,
        # about a third more per actor start, and most of a test run is actor starts.
        path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), str(ROOT / "examples"), *([path] if path else [])])
        ray.init(
            address="local",  # never attach to a cluster another process started
            num_cpus=2,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
            _metrics_export_port=_metrics_port,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_metrics_port(ray_session: Any) -> int:
    """The port of ``http://127.0.0.1:<port>/metrics`` of the session Ray (Prometheus)."""
    if _metrics_port is None:
        pytest.skip("Ray was started outside ray_session: its metrics port is unknown")
    return _metrics_port


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
