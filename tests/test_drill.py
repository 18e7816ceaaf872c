"""``raykv.tools.drill`` and ``raykv drill``: kill plans, the exactness model, a drill with kills.

The model test compares ``expected_epochs`` with a row-by-row Python dict model, so the
drill's own yardstick is checked independently of pyarrow's group_by. The drill itself
runs with 5 kills (every moment at least once) on the session Ray; 20 kills in a row are
run by hand (``raykv drill --kills 20``), see the report in the commit log.
"""

from __future__ import annotations

import itertools
import json
import random
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest

from raykv.checkpointing import transfer
from raykv.checkpointing.objectstore import PROBE_RETRIES
from raykv.cli import main
from raykv.tools.drill import (
    MOMENTS,
    DrillConfig,
    KillRecord,
    diff_outputs,
    expected_epochs,
    format_table,
    plan_kills,
)

SMALL = DrillConfig(kills=3, events=5_000, keys=50, batch_size=400, epoch_every=3)


# ---------------------------------------------------------------------------- no Ray


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="moments"):
        DrillConfig(moments=("mid-batch", "sideways"))
    with pytest.raises(ValueError, match="follows another kill"):
        DrillConfig(moments=("recovery",))
    with pytest.raises(ValueError, match="too short"):
        DrillConfig(events=1_000, batch_size=1_000)
    with pytest.raises(ValueError, match="kills"):
        DrillConfig(kills=-1)
    with pytest.raises(ValueError):
        DrillConfig(engine="nosuchengine")
    assert SMALL.num_batches == 13 and SMALL.final_epoch == 5


@pytest.mark.parametrize("seed", range(20))
def test_plan_covers_every_moment_and_recovery_follows_a_kill(seed: int) -> None:
    cfg = DrillConfig(kills=12)
    plan = plan_kills(cfg, 12, random.Random(seed))
    moments = [p.moment for p in plan]
    assert set(moments[:4]) == set(MOMENTS)  # every moment early on
    assert moments[0] != "recovery"
    assert all(not (a == b == "recovery") for a, b in itertools.pairwise(moments))
    for p in plan:
        assert p.delay >= 0 and p.skip in (0, 1)
        assert p.delay <= max(cfg.upload_delay, cfg.restore_delay, 0.15)


def test_expected_epochs_equal_a_dict_model() -> None:
    cfg = SMALL
    rows = cfg.generator().table().to_pylist()
    per_epoch = cfg.batch_size * cfg.epoch_every
    state: dict[int, list[int]] = {}  # user -> [sum, count, min, max]
    want: dict[int, dict[int, tuple[int, int, int, int]]] = {}
    for e in range(1, cfg.final_epoch):
        touched = set()
        for r in rows[per_epoch * (e - 1): per_epoch * e]:
            u, a = r["user"], r["amount"]
            s = state.setdefault(u, [0, 0, a, a])
            s[0] += a
            s[1] += 1
            s[2], s[3] = min(s[2], a), max(s[3], a)
            touched.add(u)
        want[e] = {u: tuple(state[u]) for u in touched}
    for r in rows[per_epoch * (cfg.final_epoch - 1):]:
        u, a = r["user"], r["amount"]
        s = state.setdefault(u, [0, 0, a, a])
        s[0] += a
        s[1] += 1
        s[2], s[3] = min(s[2], a), max(s[3], a)
    want[cfg.final_epoch] = {u: tuple(v) for u, v in state.items()}
    got = expected_epochs(cfg)
    assert sorted(got) == sorted(want)
    for e, table in got.items():
        as_dict = {r["user"]: (r["amount_sum"], r["amount_count"], r["amount_min"],
                               r["amount_max"]) for r in table.to_pylist()}
        assert as_dict == want[e], e


def test_diff_outputs_finds_every_kind_of_difference() -> None:
    want = expected_epochs(SMALL)
    assert diff_outputs(want, want, "x") == []
    missing = {e: t for e, t in want.items() if e != 2}
    assert any("epochs" in p for p in diff_outputs(missing, want, "x"))
    fewer = dict(want)
    fewer[1] = want[1].slice(1)
    assert any("epoch 1 has" in p for p in diff_outputs(fewer, want, "x"))
    changed = dict(want)
    t = want[3]
    sums = t["amount_sum"].to_pylist()
    sums[-1] += 1
    changed[3] = t.set_column(t.column_names.index("amount_sum"), "amount_sum",
                              pa.array(sums, pa.int64()))
    problems = diff_outputs(changed, want, "x")
    assert len(problems) == 1 and "amount_sum" in problems[0]
    assert str(t["user"][len(sums) - 1].as_py()) in problems[0]


def test_format_table() -> None:
    recs = [
        KillRecord(1, 1, "upload", "0.10 s after barrier 3", "Aggregate0-1of2-g0", 3,
                   restored_from=2, events_replayed=4_000, detect_s=0.2, recovery_s=2.5),
        KillRecord(2, 1, "mid-batch", "0.05 s after committed 4", "Aggregate0-0of2-g0", 4,
                   detect_s=0.1, interrupted=True),
    ]
    lines = format_table(recs).splitlines()
    assert len(lines) == 4 and "restored" in lines[0]
    assert "4,000" in lines[2] and "2.50" in lines[2]
    assert "interrupted" in lines[3]


# ---------------------------------------------------------------------------- with Ray


@pytest.mark.ray
@pytest.mark.slow
def test_drill_cli_survives_kills_at_every_moment(ray_session: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["drill", "--kills", "5", "--events", "16000", "--keys", "500",
                 "--batch-size", "1000", "--seed", "3", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    doc = json.loads(out.out[out.out.index("{"):])
    assert doc["ok"] and not doc["problems"]
    kills = doc["kills"]
    assert len(kills) == 5 and {k["moment"] for k in kills} == set(MOMENTS)
    assert [k["number"] for k in kills] == [1, 2, 3, 4, 5]
    final = DrillConfig(events=16000, batch_size=1000).final_epoch
    for k in kills:
        assert k["detect_s"] is not None and k["detect_s"] >= 0
        assert k["events_replayed"] >= 0
        if not k["interrupted"]:
            assert k["recovery_s"] > k["detect_s"]
            assert k["restored_from"] is None or k["restored_from"] < final
        if k["moment"] == "acked":  # a kill after the acks does not stop that commit
            assert k["restored_from"] is not None and k["restored_from"] >= k["epoch"]
    assert doc["epochs"] == final


def test_drill_cli_bad_input(capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["drill", "--moments", "mid-batch,sideways"]) == 2
    assert "moments" in capsys.readouterr().err
    assert main(["drill", "--events", "10", "--batch-size", "10"]) == 2
    assert "too short" in capsys.readouterr().err
    backoffs: list[float] = []  # recorded, not slept
    monkeypatch.setattr(transfer, "time", SimpleNamespace(sleep=backoffs.append))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")  # else it fails on missing credentials
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    code = main(["drill", "--checkpoint", "s3://bucket/drill", "--endpoint-url",
                 "http://127.0.0.1:9"])
    assert code == 3
    err = capsys.readouterr().err
    # said after the probe's few retries, before any Ray or pipeline work
    assert "127.0.0.1:9" in err and f"failed after {PROBE_RETRIES + 1} attempts" in err, err
    assert len(backoffs) == PROBE_RETRIES and "s3cr3t" not in err
