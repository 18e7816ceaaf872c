"""AppendLog batches of varied key lengths and one value length, grouped by key length.

``multi_set`` writes such a batch's records grouped by key length (``bulk.py``,
``_append_grouped``): the log order of a batch's records changes, nothing else may.
Checked against a dict model through run closes, merges, seals, reopens and crashes.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raykv.engines import AppendLog
from raykv.engines.appendlog import bulk

PARAMS = {"threshold": 8 << 10, "max_runs_per_level": 3}
_RNG = random.Random(5)
POOL = [_RNG.randbytes(n) for n in range(1, 128) for _ in range(12)]  # keys of 1-127 B

steps = st.lists(st.one_of(
    st.tuples(st.just("batch"), st.integers(0, len(POOL) - 1), st.integers(200, 700),
              st.sampled_from([0, 1, 16, 127, 128, 300]), st.binary(min_size=1, max_size=1)),
    st.tuples(st.sampled_from(["seal", "reopen", "crash"])),
), min_size=1, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=steps)
def test_grouped_batches_against_a_dict(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    path = Path(tempfile.mkdtemp()) / "db"
    store = AppendLog(path, **PARAMS)
    model: dict[bytes, bytes] = {}
    sealed: dict[bytes, bytes] = {}
    since: dict[bytes, set[bytes]] = {}
    try:
        for op in ops:
            if op[0] == "batch":
                _, first, n, vlen, tag = op
                keys = [POOL[(first + 7 * i) % len(POOL)] for i in range(n)]
                batch = {k: (tag * vlen) for k in keys}
                store.multi_set(batch)
                for k, v in batch.items():
                    since.setdefault(k, set()).add(v)
                    if v:
                        model[k] = v
                    else:
                        model.pop(k, None)
            elif op[0] == "seal":
                store.seal()
                sealed, since = dict(model), {}
            elif op[0] == "reopen":
                store.close()
                sealed, since = dict(model), {}
                store = AppendLog(path, **PARAMS)
            else:  # a crash: at least the last seal's state
                store.discard()
                store = AppendLog(path, **PARAMS)
                got = dict(store.items())
                for key in got.keys() | sealed.keys() | since.keys():
                    allowed = {sealed.get(key, b"")} | since.get(key, set())
                    assert got.get(key, b"") in allowed
                model, sealed, since = got, dict(got), {}
            assert store.live_keys() == len(model)
            probe = POOL[:: len(POOL) // 50]
            assert store.multi_get(probe) == [model.get(k, b"") for k in probe]
        assert dict(store.items()) == model
        store._check()
    finally:
        store.close()


def test_grouped_path_is_taken_and_reads_back(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = bulk.BulkWrites._append_grouped

    def spy(self: AppendLog, keys, values, klens, vl):  # type: ignore[no-untyped-def]
        calls.append(len(keys))
        real(self, keys, values, klens, vl)

    monkeypatch.setattr(bulk.BulkWrites, "_append_grouped", spy)
    batch = {POOL[i]: b"v" * 16 for i in range(0, len(POOL), 3)}
    with AppendLog(tmp_path) as store:
        store.multi_set(batch)
        assert calls == [len(batch)] and len(batch) > 400
        assert store.multi_get(list(batch)) == list(batch.values())
        store.multi_set({k: b"" for k in list(batch)[:300]})  # tombstones, grouped too
        assert len(calls) == 2
        store._check()
    with AppendLog(tmp_path) as store:
        assert dict(store.items()) == dict(list(batch.items())[300:])
