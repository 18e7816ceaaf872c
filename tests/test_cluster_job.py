"""A two-node Ray cluster started with ``ray start``; ``examples/cluster_job.py`` submitted
through the Ray Jobs API; its result checked here against a pyarrow model.

The cluster must not clash with the session Ray of the test process (and with Ray
instances of other test runs on the machine): both nodes bind 127.0.0.1 on free ports,
use their own temp dir, and run ``ray start --block`` in a process group of their own,
which the test ends by process group id in a ``finally`` (never ``ray stop``, which would
stop every Ray on the machine). One CPU per node keeps within the 2-core budget (shards
reserve no CPU).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from raykv.checkpointing import CheckpointStore
from raykv.tools.demo import ZipfEvents
from raykv.tools.drill import read_published

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
EVENTS, KEYS, BATCH = 40_000, 2_000, 5_000
START_TIMEOUT = 120.0
JOB_TIMEOUT = 300.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node_ports() -> list[str]:
    """Flags giving every listening port of one node a free port (no default port clash)."""
    return [
        f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}",
        f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
    ]


def _stop(proc: subprocess.Popen[bytes], marker: str) -> None:
    """End a ``ray start --block`` process group, then any process still using ``marker``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    # Ray daemons that left the group still name our private temp dir on their command line
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


@contextlib.contextmanager
def two_node_cluster(log_dir: Path) -> Iterator[str]:
    """Start a head (with dashboard) and a worker node on 127.0.0.1; yield the dashboard URL."""
    from ray.util.state import list_nodes

    temp_dir = Path(tempfile.mkdtemp(prefix="rkv", dir="/tmp"))  # short: unix socket paths
    gcs, dash = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # a token in ~/.ray turns token auth on for new clusters; this one serves 127.0.0.1 only
    env["RAY_AUTH_MODE"] = "disabled"
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
              "--object-store-memory=100000000", f"--temp-dir={temp_dir}",
              "--disable-usage-stats"]
    head_cmd = ["ray", "start", "--head", f"--port={gcs}", "--include-dashboard=true",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", *common,
                *_node_ports()]
    worker_cmd = ["ray", "start", f"--address=127.0.0.1:{gcs}", *common, *_node_ports()]
    procs: list[subprocess.Popen[bytes]] = []
    url = f"http://127.0.0.1:{dash}"
    try:
        for name, cmd in (("head", head_cmd), ("worker", worker_cmd)):
            with open(log_dir / f"ray-{name}.log", "wb") as log:
                procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
            if name == "head":
                _wait_for(lambda: _dashboard_up(url), "the head's dashboard", procs, log_dir)
        _wait_for(lambda: sum(n.state == "ALIVE" for n in list_nodes(address=url)) >= 2,
                  "two alive nodes", procs, log_dir)
        yield url
    finally:
        for proc in reversed(procs):
            _stop(proc, str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


def _dashboard_up(url: str) -> bool:
    from ray.job_submission import JobSubmissionClient

    JobSubmissionClient(url)  # raises until the dashboard answers
    return True


def _wait_for(check: Any, what: str, procs: list[subprocess.Popen[bytes]], log_dir: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                logs = "".join(f.read_text(errors="replace")[-3000:] for f in log_dir.glob("*.log"))
                pytest.fail(f"`ray start` exited with {p.returncode} waiting for {what}:\n{logs}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.5)
    pytest.fail(f"no {what} after {START_TIMEOUT:.0f} s")


def test_cluster_job_on_two_nodes(tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    ckpt, out = f"file://{tmp_path / 'ckpt'}", tmp_path / "out"
    with two_node_cluster(tmp_path) as url:
        client = JobSubmissionClient(url)
        job_id = client.submit_job(
            entrypoint=(f"{sys.executable} {REPO / 'examples' / 'cluster_job.py'} "
                        f"--events {EVENTS} --keys {KEYS} --batch-size {BATCH}"),
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "RAYKV_CHECKPOINT_URL": ckpt,
                                      "RAYKV_OUTPUT_URL": str(out)}},
        )
        deadline = time.monotonic() + JOB_TIMEOUT
        status = client.get_job_status(job_id)
        while not status.is_terminal() and time.monotonic() < deadline:
            time.sleep(1)
            status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if not status.is_terminal():
            client.stop_job(job_id)
        assert status == JobStatus.SUCCEEDED, f"job {status}:\n{logs[-4000:]}"
    lines = [ln for ln in logs.splitlines() if ln.startswith("RAYKV_RESULT ")]
    assert lines, logs[-4000:]
    result = json.loads(lines[-1].removeprefix("RAYKV_RESULT "))
    assert result["ok"], result["problem"]
    assert result["mode"] == "cluster" and result["nodes"] == 2
    assert len(set(result["shard_nodes"].values())) == 2  # SPREAD: one shard per node
    gen = ZipfEvents(events=EVENTS, keys=KEYS, batch_size=BATCH)
    final = gen.num_batches // 2 + 1
    assert result["epochs_committed"] == list(range(1, final + 1))
    assert result["rows_in"] == EVENTS
    # independent checks of what the job left behind
    store = CheckpointStore(ckpt)
    assert store.latest_epoch() == final and store.read_epoch(final).metadata["final"]
    store.verify()
    published = read_published(out)
    assert sorted(published) == list(range(1, final + 1))
    want = pa.TableGroupBy(gen.table(), "user", use_threads=False).aggregate(
        [("amount", "sum"), ("amount", "count"), ("amount", "max")]).sort_by("user")
    got = published[final].select(want.column_names)
    assert got.equals(want)
