"""The default engine root must not shadow the package (issue 11.3).

A folder named ``raykv`` in the temp dir is an importable namespace package: a script
started there imported it instead of raykv. The default is now ``$TMPDIR/raykv-state``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest

import raykv
from raykv.pipeline import default_local_dir
from raykv.sources import TableSource

ROOT = Path(__file__).resolve().parent.parent


def _import_from(cwd: str) -> subprocess.CompletedProcess[str]:
    """``import raykv`` in a fresh interpreter whose working directory is ``cwd``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", "import raykv; print(raykv.Pipeline.__name__)"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def test_default_local_dir_is_not_importable() -> None:
    name = Path(default_local_dir()).name
    assert Path(default_local_dir()).parent == Path(tempfile.gettempdir())
    assert not name.isidentifier(), f"{name!r} could be imported as a package"


@pytest.mark.ray
def test_a_run_with_the_default_local_dir_leaves_raykv_importable(
    ray_session: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # the driver's $TMPDIR for this run
    table = pa.table({"k": [i % 7 for i in range(1000)], "v": list(range(1000))})
    pipeline = raykv.Pipeline(
        source=TableSource(table, batch_size=250),
        stages=[raykv.operators.Aggregate(key="k", aggs={"v": ["sum"]})],
        num_shards=2, engine="memonly", checkpoint=str(tmp_path / "ckpt"),
        epoch_every_batches=2,
    )
    assert pipeline.run().finished
    assert [p.name for p in temp.iterdir()] == [Path(default_local_dir()).name]
    # a script started from the temp dir has it first on sys.path
    result = _import_from(str(temp))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Pipeline"
