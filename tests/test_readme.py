"""Every code block of README.md runs as written (the cluster block is checked, not run)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest

from raykv.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.S)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCKS if kind == lang]


def test_quickstart_is_the_ci_command() -> None:
    quickstart = blocks("bash")[0].strip().splitlines()
    assert quickstart == ["python -m pip install -e . && raykv demo",
                          "python -m pip install -e '.[test]' && python -m pytest -q"]
    assert quickstart[1] in (ROOT / ".ci" / "run").read_text()


@pytest.mark.ray
@pytest.mark.slow
def test_python_blocks_then_cli_block_and_demo(ray_session: Any,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree("/tmp/raykv-readme", ignore_errors=True)
    for body in blocks("python"):
        exec(compile(body, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "raykv run finished" in out and "users in shard 0's final output" in out
    cli = next(b for b in blocks("bash") if "raykv checkpoints list" in b)
    for line in cli.strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "raykv"
        assert main(argv[1:]) == 0, line
    assert list(Path("/tmp/raykv-readme/export").glob("totals-epoch5.parquet"))
    # the Quickstart's main job, exactly as written
    assert main(["demo"]) == 0
    assert "exact" in capsys.readouterr().out


def test_cluster_block_refers_to_real_files() -> None:
    cluster = next(b for b in blocks("bash") if "ray up" in b)
    assert "ray up cluster.yaml" in cluster and "ray down cluster.yaml" in cluster
    assert "-- python examples/cluster_job.py" in cluster
    assert (ROOT / "cluster.yaml").is_file() and (ROOT / "examples" / "cluster_job.py").is_file()
    # the same entrypoint runs through the Jobs API in tests/test_cluster_job.py
    assert "cluster_job.py" in (ROOT / "tests" / "test_cluster_job.py").read_text()
