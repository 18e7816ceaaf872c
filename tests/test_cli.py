"""The ``raykv`` command line against real stores (file:// and the moto S3 server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from raykv.checkpointing import CheckpointStore
from raykv.checkpointing.objectstore import PROBE_RETRIES
from raykv.cli import main
from raykv.engines import MemOnly


def make_store(tmp_path: Path, epochs: int = 4) -> tuple[str, dict[int, dict[bytes, bytes]]]:
    """Commit ``epochs`` epochs of two MemOnly shards; return the URL and each epoch's state."""
    url = f"file://{tmp_path / 'ckpt'}"
    store = CheckpointStore(url)
    states: dict[int, dict[bytes, bytes]] = {}
    engines = {f"agg/{i:04d}": MemOnly(tmp_path / f"shard{i}") for i in range(2)}
    for e in range(1, epochs + 1):
        manifests = {}
        for i, (name, eng) in enumerate(engines.items()):
            eng.set(b"key-%d" % i, b"value-%d-%d" % (i, e))
            manifests[name] = store.upload_shard(e, name, eng.data_dir, eng.seal())
        store.commit_epoch(e, manifests, offsets={"source": e * 100})
        states[e] = {b"key-0": b"value-0-%d" % e}
    for eng in engines.values():
        eng.close()
    return url, states


def test_list_show_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = make_store(tmp_path)
    assert main(["checkpoints", "list", url]) == 0
    out = capsys.readouterr().out
    # (rows only: the session's Ray may forward a worker's log line into the capture)
    firsts = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert "epoch" in firsts and [f for f in firsts if f.isdigit()] == ["1", "2", "3", "4"]
    assert main(["checkpoints", "show", url, "3"]) == 0
    out = capsys.readouterr().out
    assert '"source": 300' in out and "agg/0000" in out and "agg/0001" in out
    assert main(["checkpoints", "verify", url]) == 0
    assert "ok" in capsys.readouterr().out


def test_missing_epoch_and_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = make_store(tmp_path, epochs=2)
    assert main(["checkpoints", "show", url, "9"]) == 2
    err = capsys.readouterr().err
    assert "epoch 9" in err and "1, 2" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["checkpoints", "list", str(empty)]) == 2
    assert "no committed checkpoints" in capsys.readouterr().err


def test_verify_names_the_corrupt_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = make_store(tmp_path)
    root = Path(url.removeprefix("file://"))
    victim = sorted((root / "files").rglob("*.snap"))[-1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert main(["checkpoints", "verify", url]) == 1
    assert victim.name in capsys.readouterr().err


def test_gc_is_a_dry_run_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = make_store(tmp_path, epochs=5)
    root = Path(url.removeprefix("file://"))
    before = sorted(p for p in root.rglob("*") if p.is_file())
    assert main(["checkpoints", "gc", url, "--retain", "2"]) == 0
    out = capsys.readouterr().out
    assert "would delete: 3 epoch(s)" in out and "nothing was deleted" in out
    assert sorted(p for p in root.rglob("*") if p.is_file()) == before
    assert main(["checkpoints", "gc", url, "--retain", "2", "--yes"]) == 0
    assert CheckpointStore(url).epochs() == [4, 5]
    assert main(["checkpoints", "verify", url]) == 0
    assert main(["checkpoints", "gc", url, "--retain", "0"]) == 2


def test_restore_local(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, states = make_store(tmp_path)
    out_dir = tmp_path / "restored"
    assert main(["checkpoints", "restore-local", url, "2", "--shard", "agg/0000",
                 str(out_dir)]) == 0
    with MemOnly(out_dir) as eng:
        assert dict(eng.items()) == states[2]
    first = capsys.readouterr().out
    assert "file(s) downloaded" in first and " 0 already there" in first
    # again into the same dir: the files there are verified and reused, none downloaded
    assert main(["checkpoints", "restore-local", url, "2", "--shard", "agg/0000",
                 str(out_dir)]) == 0
    assert ": 0 file(s) downloaded (0 B)" in capsys.readouterr().out
    with MemOnly(out_dir) as eng:
        assert dict(eng.items()) == states[2]
    assert main(["checkpoints", "restore-local", url, "2", "--shard", "nope", str(out_dir)]) == 2
    assert "agg/0000" in capsys.readouterr().err


@pytest.mark.s3
def test_s3_store_via_flags(tmp_path: Path, s3_bucket: tuple[str, dict[str, Any]],
                            capsys: pytest.CaptureFixture[str]) -> None:
    url, options = s3_bucket
    store = CheckpointStore(f"{url}/ckpt", options)
    with MemOnly(tmp_path / "s") as eng:
        eng.set(b"a", b"1")
        store.commit_epoch(7, {"engine": store.upload_shard(7, "engine", eng.data_dir, eng.seal())})
    env = {"AWS_ACCESS_KEY_ID": options["key"], "AWS_SECRET_ACCESS_KEY": options["secret"]}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main(["checkpoints", "list", f"{url}/ckpt",
                     "--endpoint-url", options["endpoint_url"]]) == 0
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = capsys.readouterr()
    assert out.out.splitlines()[1].split()[0] == "7"
    assert "testing" not in out.out + out.err  # secrets never printed


def test_unreachable_endpoint_fails_fast() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "raykv.cli", "checkpoints", "list", "s3://bucket/x",
         "--endpoint-url", "http://127.0.0.1:9"],
        capture_output=True, text=True, check=False, timeout=300,  # only catches a hang
        env={**os.environ, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s3cr3t"},
    )
    assert proc.returncode == 3, proc.stderr
    # fast because the probe gives up after PROBE_RETRIES retries (not the default 5)
    assert f"probe failed after {PROBE_RETRIES + 1} attempts" in proc.stderr, proc.stderr
    assert "127.0.0.1:9" in proc.stderr and "s3cr3t" not in proc.stderr


def test_help_on_every_command() -> None:
    for args in (["--help"], ["demo", "--help"], ["checkpoints", "--help"],
                 *[["checkpoints", c, "--help"] for c in
                   ("list", "show", "verify", "gc", "export", "restore-local")]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 0


@pytest.mark.ray
def test_export_stage_state_as_parquet(ray_session: Any, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import raykv

    rng = __import__("random").Random(4)
    table = pa.table({"user": [rng.randrange(50) for _ in range(3000)],
                      "amount": [rng.randrange(100) for _ in range(3000)]})
    url = f"file://{tmp_path / 'ckpt'}"
    summary = raykv.Pipeline(
        source=raykv.sources.TableSource(table, batch_size=500),
        stages=[raykv.operators.Aggregate(key="user", aggs={"amount": ["sum", "count"]},
                                          name="totals")],
        num_shards=2, engine="lsm", checkpoint=url, epoch_every_batches=2,
        local_dir=str(tmp_path / "state"),
    ).run()
    epoch = summary.last_epoch
    assert main(["checkpoints", "export", url, str(epoch), "--stage", "totals",
                 "--out", str(tmp_path / "out")]) == 0
    got = pq.read_table(tmp_path / "out" / f"totals-epoch{epoch}.parquet").sort_by("user")
    want = table.group_by("user").aggregate([("amount", "sum"), ("amount", "count")])
    want = want.sort_by("user")
    assert got.column("user").to_pylist() == want.column("user").to_pylist()
    assert got.column("amount_sum").to_pylist() == want.column("amount_sum").to_pylist()
    assert got.column("amount_count").to_pylist() == want.column("amount_count").to_pylist()
    assert main(["checkpoints", "export", url, str(epoch), "--stage", "nope",
                 "--out", str(tmp_path / "out2")]) == 2
    assert "totals" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_the_demos_output_goes_to_the_streams_of_the_call(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The demo's progress line and summary write to ``sys.stderr`` / ``sys.stdout`` as
    they are when the demo runs. (They were bound when the module was first imported: a
    test that imported it under pytest's capture left ``raykv demo`` failing later with
    "I/O operation on closed file".)"""
    import inspect
    import io

    from raykv.tools import demo

    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert demo.ProgressLine(10).stream is err
    assert inspect.signature(demo.pipeline_demo).parameters["stream"].default is None
