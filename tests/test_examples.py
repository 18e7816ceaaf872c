"""Every example runs (small sizes), checks its own result, and handles bad input.

Examples are scripts in ``examples/``; each has ``main(argv) -> int`` and is run here
in-process on the session Ray. Bad input must give a clear message and a non-zero exit
with nothing written: a URL with no checkpoints, an epoch that does not exist (the
committed ones listed), a corrupt store (the file named), an unreachable S3 endpoint
(after the probe's few retries) and wrong credentials (no retry).
"""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raykv.checkpointing import CheckpointStore, transfer
from raykv.checkpointing.objectstore import PROBE_RETRIES
from raykv.sinks import parse_part_file_name

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (``examples/`` goes on ``sys.path`` for ``_common``)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# ---------------------------------------------------------------------------- keyed_aggregation


@pytest.mark.ray
def test_keyed_aggregation_stop_resume_and_bad_input(
    ray_session: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ex = example("keyed_aggregation")
    work = tmp_path / "agg"
    small = ["--events", "30000", "--keys", "400", "--files", "3", "--batch-size", "3000"]
    assert ex.main(["--work", str(work), *small, "--stop-after", "2"]) == 0
    out = capsys.readouterr().out
    assert "first run:  raykv run stopped" in out and "resumed from epoch" in out
    assert "exact:" in out
    epochs = CheckpointStore(str(work / "checkpoints")).epochs()
    assert epochs and CheckpointStore(str(work / "checkpoints")).read_epoch(
        epochs[-1]).metadata["final"]

    # resuming a finished run publishes nothing new and still checks out
    assert ex.main(["--work", str(work), "--resume"]) == 0
    capsys.readouterr()

    # a URL with no checkpoints: clear message, exit 2, nothing created
    none = tmp_path / "nothing"
    assert ex.main(["--work", str(none), "--resume"]) == 2
    assert "no committed checkpoints" in capsys.readouterr().err
    assert not none.exists()

    # an epoch that does not exist: the committed ones are listed
    before = files_under(work)
    assert ex.main(["--work", str(work), "--restore-epoch", "99"]) == 2
    err = capsys.readouterr().err
    assert "epoch 99 is not committed" in err and str(epochs[-1]) in err
    assert files_under(work) == before

    # a wrong result is caught: tamper with the published final epoch
    final_file = max((p for p in (work / "output").glob("part-*.parquet")),
                     key=lambda p: parse_part_file_name(p.name) or (0, ""))
    t = pq.read_table(final_file)
    col = t.column_names.index("amount_count")
    counts = t["amount_count"].to_pylist()
    counts[0] += 1
    pristine = final_file.read_bytes()
    pq.write_table(t.set_column(col, "amount_count", pa.array(counts, pa.int64())), final_file)
    assert ex.main(["--work", str(work), "--resume"]) == 1
    assert "MISMATCH" in capsys.readouterr().err
    final_file.write_bytes(pristine)

    # a corrupt store: the file is named, nothing is written
    store = CheckpointStore(str(work / "checkpoints"))
    _shard, entry = max(store.read_epoch(epochs[-1]).file_refs(), key=lambda r: r[1].size)
    victim = next((work / "checkpoints").rglob(entry.name))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    before = files_under(work)
    assert ex.main(["--work", str(work), "--resume"]) == 1
    assert victim.name in capsys.readouterr().err
    assert files_under(work) == before


# ---------------------------------------------------------------------------- rescale


@pytest.mark.ray
def test_rescale_2_to_3(ray_session: Any, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    ex = example("rescale")
    code = ex.main(["--events", "24000", "--keys", "600", "--batch-size", "3000",
                    "--stop-after", "2"])  # 4 epochs and the final one
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "3 shards, resumed from epoch" in out.out and "-2of3-g1" in out.out
    assert ex.main(["--resume", "--checkpoint", f"file://{tmp_path / 'none'}"]) == 2
    assert "no committed checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


# ---------------------------------------------------------------------------- windows, drill


@pytest.mark.ray
def test_windowed_sessions(ray_session: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code = example("windowed_sessions").main(["--events", "30000", "--users", "200"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "1 recovery" in out.out and "each emitted once" in out.out


@pytest.mark.ray
def test_skewed_keys_rebalances_and_survives_a_kill(
    ray_session: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = example("skewed_keys").main(["--events", "60000", "--keys", "5000",
                                             "--batch-size", "5000"])  # 6 epochs
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "rebalanced at epoch" in out.out and "killing" in out.out
    assert "exact:" in out.out and "rebalances moved" in out.out


@pytest.mark.ray
@pytest.mark.slow
def test_recovery_drill_example(ray_session: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code = example("recovery_drill").main(["--kills", "1", "--moments", "upload",
                                           "--events", "12000", "--keys", "300", "--seed", "5"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "kills survived: 1/1" in out.out and "exact:" in out.out


# ---------------------------------------------------------------------------- Ray Data


@pytest.mark.ray
def test_ray_data_pipeline(ray_session: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ex = example("ray_data_pipeline")
    try:
        import pandas  # noqa: F401 - ray.data needs it
    except ImportError:
        # Ray Data is not installed (pyproject has ray[default], not ray[data]): the
        # example must say so and exit 2 instead of a traceback
        assert ex.main(["--events", "1000"]) == 2
        assert "pip install 'ray[data]'" in capsys.readouterr().err
        pytest.skip("ray.data needs pandas (ray[data]); checked the message only")
    code = ex.main(["--events", "40000", "--batch-size", "5000"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "exact:" in out.out


# ---------------------------------------------------------------------------- cluster job


@pytest.mark.ray
def test_cluster_job_runs_locally_and_resumes(
    ray_session: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ex = example("cluster_job")
    monkeypatch.setenv("RAYKV_CHECKPOINT_URL", f"file://{tmp_path / 'ckpt'}")
    monkeypatch.setenv("RAYKV_OUTPUT_URL", str(tmp_path / "out"))
    argv = ["--events", "20000", "--keys", "500", "--batch-size", "4000"]
    assert ex.main(argv) == 0
    out = capsys.readouterr().out
    assert "RAYKV_RESULT" in out and '"ok": true' in out
    # resubmitting the job continues the (finished) run: nothing new, still exact
    assert ex.main(argv) == 0
    out = capsys.readouterr().out
    assert '"epochs_committed": []' in out and '"ok": true' in out


# ---------------------------------------------------------------------------- S3


@pytest.mark.ray
@pytest.mark.s3
def test_s3_checkpoints_on_its_own_moto(ray_session: Any,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = example("s3_checkpoints").main(["--events", "20000", "--batch-size", "4000"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "moto S3 server at http://127.0.0.1:" in out.out
    assert "every file verified" in out.out and "1 recovery" in out.out


@pytest.mark.s3
def test_s3_checkpoints_bad_input(s3_bucket: tuple[str, dict[str, Any]],
                                  capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ex = example("s3_checkpoints")
    url, options = s3_bucket
    bucket = url.removeprefix("s3://")
    # no checkpoints under the prefix: exit 2, nothing written to the bucket
    assert ex.main(["--bucket", bucket, "--prefix", "empty/run", "--endpoint-url",
                    options["endpoint_url"], "--resume"]) == 2
    assert "no committed checkpoints" in capsys.readouterr().err
    import s3fs

    assert s3fs.S3FileSystem(**options).ls(bucket, detail=False) == []
    # a missing bucket: exit 3
    assert ex.main(["--bucket", "no-such-bucket-raykv", "--endpoint-url",
                    options["endpoint_url"]]) == 3
    assert "bucket does not exist" in capsys.readouterr().err
    # unreachable endpoint: said after the probe's few retries (backoffs recorded, not slept)
    backoffs: list[float] = []
    monkeypatch.setattr(transfer, "time", SimpleNamespace(sleep=backoffs.append))
    assert ex.main(["--bucket", "b", "--endpoint-url", "http://127.0.0.1:9"]) == 3
    err = capsys.readouterr().err
    assert "127.0.0.1:9" in err and f"failed after {PROBE_RETRIES + 1} attempts" in err, err
    assert len(backoffs) == PROBE_RETRIES


@pytest.mark.s3
def test_s3_checkpoints_wrong_credentials(tmp_path: Path) -> None:
    """A moto server that checks credentials (its own process: moto reads that at import)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    log = tmp_path / "moto.log"  # one line per request it answers
    with log.open("wb") as log_file:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                   "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=log_file)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / "s3_checkpoints.py"), "--bucket", "raykv-x",
             "--endpoint-url", f"http://127.0.0.1:{port}"],
            env={**os.environ, "AWS_ACCESS_KEY_ID": "AKIAWRONG", "AWS_SECRET_ACCESS_KEY":
                 "wr0ngs3cret"}, capture_output=True, text=True, timeout=60, check=False,
        )
        assert proc.returncode == 3, proc.stderr
        assert "access denied" in proc.stderr and "wr0ngs3cret" not in proc.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)
    # fast because access denied is final: one request (the probe's listing), no retry
    requests = [line for line in log.read_text(errors="replace").splitlines()
                if " HTTP/1." in line]
    assert len(requests) == 1 and " 403 " in requests[0], requests
