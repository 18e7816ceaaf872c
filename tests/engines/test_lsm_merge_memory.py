"""An LSM merge holds the new run's probes, not its inputs' as well (issue 15, item 4).

A bottom-level merge writes and opens a run as big as the state. Its inputs are read
only through their block offsets, so their filters and fences leave memory when the
merge starts (``RunReader.release_probes``) and come back if it fails
(``reload_probes``). Before, a shard held both runs' probes at the end of every such
merge: 6.7 bytes per input entry above the open runs at the peak, against 4.1 with the
release (2.9 with the leaner run writer and open that came next; tracemalloc over a merge
of two runs of 1,000,000 8-byte keys each).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest

from raykv.engines import LSMTree
from raykv.engines.lsm.levels import LevelSet
from raykv.engines.lsm.run_reader import RunReader
from raykv.engines.lsm.run_writer import RunWriter


def _fill(s: LSMTree, model: dict[bytes, bytes], rng: random.Random, n: int) -> None:
    for _ in range(n):
        k = b"%08d" % rng.randrange(20_000)
        model[k] = rng.randbytes(rng.choice([0, 6, 12])) if k in model else rng.randbytes(9)
        s.set(k, model[k])


def test_the_inputs_hold_only_their_offsets_when_the_new_run_opens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[int, int]] = []  # per merge: inputs' memory, their offsets' memory
    open_run = LevelSet._open_run

    merging: list[RunReader] = []  # the inputs of the merge under way

    def spy(self: Any, name: str) -> RunReader:
        if merging:
            inputs = merging
            opened.append((sum(r.__sizeof__() for r in inputs),
                           sum(object.__sizeof__(r) + sys.getsizeof(r.block_offsets)
                               for r in inputs)))
        return open_run(self, name)

    merge = LevelSet._merge

    def spy_merge(self: Any, plan: Any) -> None:
        lv = self._levels
        merging[:] = (lv[plan.target] + lv[plan.source] if plan.include_target
                      else lv[plan.source])
        try:
            merge(self, plan)
        finally:
            merging.clear()

    monkeypatch.setattr(LevelSet, "_open_run", spy)
    monkeypatch.setattr(LevelSet, "_merge", spy_merge)
    rng = random.Random(7)
    model: dict[bytes, bytes] = {}
    with LSMTree(tmp_path, max_runs_per_level=2, memtable_bytes_limit=8_000) as s:
        _fill(s, model, rng, 30_000)
        s.seal()
        assert s.stats.merges >= 5 and len(opened) >= 5
        for held, offsets in opened:
            assert held == offsets  # no filter, no fences: the merge's own run holds them
        s._check()
        keys = sorted(model)
        assert s.multi_get(keys) == [model[k] for k in keys]
        assert all(s.get(k) == model[k] for k in keys[::97])


def test_a_failed_merge_reads_its_inputs_probes_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(8)
    model: dict[bytes, bytes] = {}
    finish = RunWriter.finish
    with LSMTree(tmp_path, max_runs_per_level=2, memtable_bytes_limit=8_000) as s:
        _fill(s, model, rng, 3_000)
        merges = s.stats.merges

        def full_disk(self: RunWriter) -> None:
            if s._levels and any(not hasattr(r, "bloom") for lv in s._levels for r in lv):
                raise OSError(28, "No space left on device (injected)")
            finish(self)

        monkeypatch.setattr(RunWriter, "finish", full_disk)
        with pytest.raises(OSError, match="No space left"):
            for _ in range(50_000):
                k = b"%08d" % rng.randrange(20_000)
                model[k] = rng.randbytes(9)  # the failing set's value is flushed already
                s.set(k, model[k])
        assert s.stats.merges == merges  # the failed merge changed no level
        released = [r for lv in s._levels for r in lv if not hasattr(r, "bloom")]
        assert released == []  # every input has its filter and fences back
        keys = sorted(model)
        assert s.multi_get(keys) == [model[k] for k in keys]
        assert all(s.get(k) == model[k] for k in keys[::53])
        monkeypatch.setattr(RunWriter, "finish", finish)
        _fill(s, model, rng, 5_000)  # the merge is tried again and goes through
        s.seal()
        s._check()
        assert s.multi_get(keys) == [model[k] for k in keys]
