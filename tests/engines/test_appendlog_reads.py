"""AppendLog ``multi_get`` of many keys (issue 15 item 2): records gathered by numpy.

Reads of 64 keys or more gather their records per buffer and record length
(``AppendLog._records``); checked against a dict model over closed runs, the active run,
missing and deleted keys, repeats and every record size class (gathered, sliced, beyond
a uint64 location), and for damaged records.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from raykv.engines.appendlog import AppendLog
from raykv.errors import CorruptionError
from tests.engines.boundaries import apply
from tests.engines.test_appendlog import record_offset


@pytest.mark.parametrize("seed", range(3))
def test_multi_get_of_many_keys_matches_a_dict(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    keys = [b"k%d" % i * rng.randint(1, 3) for i in range(1200)]
    keys = list(dict.fromkeys(keys))
    model: dict[bytes, bytes] = {}
    params = {"threshold": 16 << 10, "max_runs_per_level": 3}
    store = AppendLog(tmp_path, **params)
    try:
        for step in range(25):
            batch = {}
            for k in rng.sample(keys, rng.choice([30, 300, 700])):
                size = rng.choice([0, 1, 16, 16, 16, 40, 100, 250, 300])
                batch[k] = (b"%d." % step + rng.randbytes(size))[:size]
            store.multi_set(batch)
            apply(model, list(batch.items()))
            if rng.random() < 0.3:
                store.seal()
            if rng.random() < 0.1:
                store.close()
                store = AppendLog(tmp_path, **params)
            probe = rng.sample(keys, 600) + keys[:40] + keys[:40] + [b"missing"]
            assert store.multi_get(probe) == [model.get(k, b"") for k in probe], seed
        assert dict(store.items()) == model
    finally:
        store.close()


@pytest.mark.parametrize("vlen", [16, 100, 300])
def test_multi_get_of_many_keys_reports_a_damaged_record(tmp_path: Path, vlen: int) -> None:
    model = {b"key%04d" % i: b"%04d" % i + b"v" * (vlen - 4) for i in range(500)}
    with AppendLog(tmp_path, threshold=1 << 20) as s:
        s.multi_set(model)
        s.seal()
        name, off, n = record_offset(s, b"key0300")
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    data[off + n - 6] ^= 0x01  # the value's last byte
    path.write_bytes(bytes(data))
    if vlen <= 32:  # keys read in place: open checks the whole run
        with pytest.raises(CorruptionError, match=name.split(".")[0]):
            AppendLog(tmp_path, threshold=1 << 20)
        return
    with AppendLog(tmp_path, threshold=1 << 20) as s:
        keys = list(model)
        assert s.multi_get(keys[:200]) == [model[k] for k in keys[:200]]
        with pytest.raises(CorruptionError, match=name.split(".")[0]) as exc:
            s.multi_get(keys)
        assert exc.value.check == "crc" and exc.value.offset == off


def test_merge_parses_only_the_headers_of_long_records(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """One long record (an operator's metadata) made a merge parse every record's header."""
    import raykv.engines.appendlog.merge as merge_module

    parsed: list[int] = []
    real = merge_module.parse_header

    def counted(buf: object, off: int) -> tuple[int, int, int]:
        parsed.append(off)
        return real(buf, off)  # type: ignore[arg-type]

    monkeypatch.setattr(merge_module, "parse_header", counted)
    model = {b"meta": b"m" * 561}
    with AppendLog(tmp_path, threshold=4 << 10, max_runs_per_level=2) as s:
        s.set(b"meta", model[b"meta"])
        for rnd in range(8):
            batch = {b"k%04d" % i: b"%02d%014d" % (rnd, i) for i in range(300)}
            s.multi_set(batch)
            model.update(batch)
            s.seal()
        assert s.stats.merges > 0
        assert dict(s.items()) == model
    assert len(parsed) <= s.stats.merges, len(parsed)  # the long record, once per merge
