from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from raykv.engines import MemOnly, open_engine
from raykv.engines.hybridlog import HybridLog
from raykv.engines.hybridlog.merge import is_prefix, pick_merge, run_level
from raykv.engines.hybridlog.runfile import (
    FOOTER,
    LEN_SHIFT,
    NO_LOC,
    PAGE_SIZE,
    RUN_KIND,
    RUN_MAGIC,
    SLOT_BITS,
    RunFile,
    encode_run,
    pack_locs,
    same_locs,
    segment_locs,
    value_ends,
)
from raykv.errors import CorruptionError, FormatVersionError
from tests.engines.contract import KVStoreContract

SMALL = {
    "mem_segment_len": 120,
    "ro_lag_interval": 40,
    "flush_interval": 40,
    "max_runs_per_level": 3,
}


class TestHybridLog(KVStoreContract):
    engine_cls = HybridLog
    small_params = SMALL


class TestHybridLogCompaction(KVStoreContract):
    engine_cls = HybridLog
    small_params = {**SMALL, "compaction_enabled": True}


# ---------------------------------------------------------------------- helpers


def run_files(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in path.glob(f"*.{RUN_KIND}")}


def load(store: HybridLog, n: int, rng: random.Random) -> dict[bytes, bytes]:
    """``n`` keys of 2 bytes with 8-byte values (the thesis snapshot workload)."""
    model = {i.to_bytes(2, "big"): rng.randbytes(8) for i in range(n)}
    store.multi_set(model)
    return model


# ---------------------------------------------------------------------- parameters


def test_default_registry_name(tmp_path: Path) -> None:
    with open_engine("hybridlog", tmp_path) as s:
        assert isinstance(s, HybridLog)
        assert (s.mem_segment_len, s.ro_lag_interval, s.flush_interval) == (40_000, 10_000, 10_000)


@pytest.mark.parametrize(
    ("params", "exc", "words"),
    [
        ({"mem_segment_len": 10, "ro_lag_interval": 8, "flush_interval": 4}, ValueError,
         "mem_segment_len=10 must be >= ro_lag_interval \\+ flush_interval = 12"),
        ({"ro_lag_interval": 0}, ValueError, "ro_lag_interval=0 must be >= 1"),
        ({"flush_interval": 2.5}, TypeError, "flush_interval must be an int"),
        ({"max_runs_per_level": 0}, ValueError, "max_runs_per_level=0"),
        ({"max_runs_per_level": 5000}, ValueError, "exceeds 1024"),
        ({"compaction_enabled": 1}, TypeError, "compaction_enabled must be a bool"),
        ({"mem_segment_len": True}, TypeError, "mem_segment_len must be an int"),
    ],
)
def test_bad_parameters(tmp_path: Path, params: dict[str, Any], exc: type[Exception],
                        words: str) -> None:
    with pytest.raises(exc, match=words):
        HybridLog(tmp_path, **params)
    HybridLog(tmp_path).close()  # a refused construction leaves the directory unlocked


def test_refuses_another_engines_directory(tmp_path: Path) -> None:
    with MemOnly(tmp_path) as m:
        m.set(b"a", b"1")
    with pytest.raises(ValueError, match="holds a 'memonly' engine"):
        HybridLog(tmp_path)


# ---------------------------------------------------------------------- regions


def test_records_move_mutable_read_only_disk_as_parameters_say(tmp_path: Path) -> None:
    # page = max(1, min(4, 4) // 16) = 1: the read-only boundary moves one record at a time
    with HybridLog(tmp_path, ro_lag_interval=4, flush_interval=4, mem_segment_len=10) as s:
        sizes = []
        for i in range(13):
            s.set(b"k%02d" % i, b"v%02d" % i)
            r = s.region_sizes()
            sizes.append((r["mutable"], r["read_only"], r["cached"], r["runs"], r["disk_records"]))
            s._check()
        assert sizes == [
            (1, 0, 0, 0, 0), (2, 0, 0, 0, 0), (3, 0, 0, 0, 0), (4, 0, 0, 0, 0),
            (4, 1, 0, 0, 0), (4, 2, 0, 0, 0), (4, 3, 0, 0, 0),
            (4, 0, 2, 1, 4),  # 4 read-only records flushed as one run; cache keeps 10-4-4=2
            (4, 1, 2, 1, 4), (4, 2, 2, 1, 4), (4, 3, 2, 1, 4),
            (4, 0, 2, 2, 8),
            (4, 1, 2, 2, 8),
        ]
        # the flushed run holds exactly the 4 oldest records, k00..k03 then k04..k07
        first = s._runs[0].index()[0]
        assert sorted(first) == [b"k00", b"k01", b"k02", b"k03"]
        # an update of a read-only key is a read-copy-update: appended to the mutable region
        s.set(b"k08", b"new")  # k08 is read-only now
        r = s.region_sizes()
        assert (r["mutable"], r["read_only"]) == (4, 1)  # k08 out of read-only, k09 shifted in
        assert b"k08" in s._mut and s.get(b"k08") == b"new"
        s._check()


def test_in_place_update_appends_nothing(tmp_path: Path) -> None:
    with HybridLog(tmp_path, ro_lag_interval=100, flush_interval=100, mem_segment_len=300) as s:
        for i in range(100):
            s.set(b"k%03d" % i, b"first")
        before = s.region_sizes()
        files = run_files(tmp_path)
        for round_ in range(50):
            for i in range(100):
                s.set(b"k%03d" % i, b"v%d" % round_)
            s.multi_set([(b"k%03d" % i, b"m%d" % round_) for i in range(0, 100, 3)])
        assert s.region_sizes() == before  # 100 mutable records, nothing read-only or on disk
        assert run_files(tmp_path) == files == {}
        assert s.get(b"k003") == b"m49" and s.get(b"k004") == b"v49"
        # one seal writes the 100 records once, whatever the number of updates
        s.seal()
        assert len(s._runs) == 1 and s._runs[0].count == 100


def test_memory_does_not_grow_with_overwrites(tmp_path: Path) -> None:
    keys = [b"key%04d" % i for i in range(1000)]
    # half the keys fit the mutable region: the others cycle through read-copy-update,
    # the read-only region, flushes and merges
    with HybridLog(tmp_path, ro_lag_interval=500, flush_interval=4000, mem_segment_len=4500,
                   max_runs_per_level=8) as s:
        sizes = []
        for round_ in range(1000):  # 1,000,000 overwrites of 1,000 keys
            value = b"%06d" % round_
            if round_ % 10 == 0:
                for k in keys:
                    s.set(k, value)
            else:
                s.multi_set(dict.fromkeys(keys, value))
            if round_ % 50 == 49:
                s.seal()
            if round_ in (99, 999):
                sizes.append((s.__sizeof__(), s.region_sizes()))
        (small, r1), (large, r2) = sizes
        assert r1["index"] == r2["index"] == 1000
        assert r2["mutable"] + r2["read_only"] + r2["cached"] <= 4500
        # at most 8 runs per level, levels 0..3 for runs of <= 1,000 records
        assert r2["runs"] <= 4 * 8 and r2["disk_records"] <= 4 * 8 * 1000
        assert s.stats.merges > 5
        assert large <= small * 1.25, (small, large)
        assert dict(s.items()) == dict.fromkeys(keys, b"000999")
        s._check()


# ---------------------------------------------------------------------- seal and open


def test_incremental_seal_writes_only_dirty_records(tmp_path: Path) -> None:
    rng = random.Random(3)
    with HybridLog(tmp_path, ro_lag_interval=10_000, flush_interval=10_000,
                   mem_segment_len=210_000) as s:
        model = load(s, 65_536, rng)
        first = set(s.seal())
        updated = {}
        while len(updated) < 1000:
            k = rng.randrange(65_536).to_bytes(2, "big")
            updated[k] = rng.randbytes(8)
        for k, v in updated.items():
            s.set(k, v)
        merges = s.stats.merges
        written = s.stats.disk_bytes
        pending = {r.name: r.pending for r in s._runs}
        second = set(s.seal())
        # the seal's cost is O(dirty records): it writes one run of exactly the 1,000
        # updated records and a manifest, never merges, and reads no value of older runs
        # (its wall time is a benchmark target: benchmarks/snapshots.py, updates experiment)
        assert s.stats.merges == merges
        new = second - first
        new_runs = [n for n in new if n.endswith(RUN_KIND)]
        assert len(new_runs) == 1 and len(new) == 2  # one run + the manifest
        run_bytes = (tmp_path / new_runs[0]).stat().st_size
        # 1,000 x (2-byte key + 8-byte value + 1-byte key length + 4-byte end) + crcs, footer
        assert 15_000 <= run_bytes <= 15_000 + 4 * 3 + FOOTER.size
        assert s._runs[-1].count == 1000
        manifest_bytes = sum((tmp_path / n).stat().st_size for n in new if n not in new_runs)
        assert s.stats.disk_bytes - written == run_bytes + manifest_bytes
        assert {r.name: r.pending for r in s._runs[:-1]} == pending
        model.update(updated)
    with HybridLog(tmp_path) as s:
        assert s.multi_get(list(model)) == list(model.values())


def test_reopen_loads_index_sections_without_reading_values(tmp_path: Path) -> None:
    rng = random.Random(4)
    params = {"ro_lag_interval": 2000, "flush_interval": 2000, "mem_segment_len": 8000}
    with HybridLog(tmp_path, **params) as s:
        model = load(s, 65_536, rng)
        for _ in range(5):
            s.multi_set({rng.randrange(65_536).to_bytes(2, "big"): b"x" * 8 for _ in range(500)})
            s.seal()
        model.update(dict(s.items()))
    files = sorted(p.name for p in tmp_path.iterdir())
    s = HybridLog(tmp_path, **params)
    try:
        runs = s._runs
        assert len(runs) > 3 and s.region_sizes()["index"] == 65_536
        # no value page was read (each is crc-checked on its first read), nothing was
        # merged or written: an open costs the index sections only (its wall time is a
        # benchmark target: benchmarks/snapshots.py, restore)
        assert all(r.pending == -(-r.values_len // PAGE_SIZE) for r in runs)
        assert s.stats.merges == 0 and s.stats.disk_bytes == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == files
        key = b"\x01\x02"
        assert s.get(key) == model[key]
        assert sum(r.pending for r in runs) == sum(-(-r.values_len // PAGE_SIZE) for r in runs) - 1
    finally:
        s.close()


def test_seal_does_not_merge_the_next_write_does(tmp_path: Path) -> None:
    with HybridLog(tmp_path, ro_lag_interval=10, flush_interval=10, mem_segment_len=30,
                   max_runs_per_level=2) as s:
        for i in range(3):
            s.set(b"a%d" % i, b"v")
            s.seal()
        assert len(s._runs) == 3 and s.stats.merges == 0  # level 0 holds 3 > 2 runs
        files = s.live_files()
        assert s.seal() == files  # idle seal: nothing written, still no merge
        s.get(b"a1")
        assert s.stats.merges == 0
        s.set(b"b", b"w")  # the first write after the seal merges
        assert s.stats.merges == 1 and len(s._runs) == 1
        assert sorted(s._runs[0].index()[0]) == [b"a0", b"a1", b"a2"]
        s._check()


# ---------------------------------------------------------------------- merges


def test_merges_drop_superseded_records(tmp_path: Path) -> None:
    with HybridLog(tmp_path, ro_lag_interval=50, flush_interval=50, mem_segment_len=100,
                   max_runs_per_level=3) as s:
        for round_ in range(4):  # 4 seal runs of the same 50 keys: 200 records, 50 live
            s.multi_set({b"k%02d" % i: b"r%d" % round_ for i in range(50)})
            s.seal()
        assert s.region_sizes()["disk_records"] == 200
        s.set(b"z", b"1")  # triggers the merge of level 1 (4 runs of 50 > 3)
        assert s.stats.merges == 1
        assert s.region_sizes()["disk_records"] == 50
        s._check()
    with HybridLog(tmp_path) as s:
        assert dict(s.items()) == {**{b"k%02d" % i: b"r3" for i in range(50)}, b"z": b"1"}


def test_tombstones_survive_merges_while_older_runs_exist(tmp_path: Path) -> None:
    params = {"ro_lag_interval": 200, "flush_interval": 200, "mem_segment_len": 400,
              "max_runs_per_level": 2}
    with HybridLog(tmp_path, **params) as s:
        s.multi_set({b"old%03d" % i: b"v" for i in range(150)})  # one run of 150: level 7
        s.seal()
        for i in range(3):  # three runs of 2 records (level 1); the first holds the tombstone
            s.set(b"t%d" % i, b"x")
            if i == 0:
                s.delete(b"old007")
            else:
                s.set(b"u%d" % i, b"x")
            s.seal()
        assert s.region_sizes()["runs"] == 4
        s.set(b"w", b"y")  # merges the three level-0 runs: not a prefix, tombstone kept
        assert s.stats.merges == 1 and s.region_sizes()["runs"] == 2
        merged = s._runs[1]
        keys, ends = merged.index()
        lengths = dict(zip(keys, np.diff(ends, prepend=np.uint64(0)).tolist(), strict=True))
        assert lengths[b"old007"] == 0  # the tombstone record was copied
        assert s.get(b"old007") == b""
    with HybridLog(tmp_path, **params) as s:  # and it still shadows the old value on reopen
        assert s.get(b"old007") == b"" and s.get(b"old008") == b"v"
        assert b"old007" not in dict(s.items())
        # a merge that includes the oldest run drops the tombstone for good
        assert s.region_sizes()["runs"] == 3  # base, merged, and the run holding b"w"
        s._merge([0, 1])
        # 149 old keys + t0, t1, u1, t2, u2 + w; the tombstone is gone
        assert b"old007" not in s._index and s.region_sizes()["disk_records"] == 155
        s._commit([r.name for r in s._runs], {})
    with HybridLog(tmp_path, **params) as s:
        assert s.get(b"old007") == b"" and len(dict(s.items())) == 155


def test_compaction_rewrites_sparse_runs(tmp_path: Path) -> None:
    params = {"ro_lag_interval": 100, "flush_interval": 100, "mem_segment_len": 200,
              "max_runs_per_level": 50}
    for enabled in (False, True):
        path = tmp_path / str(enabled)
        with HybridLog(path, compaction_enabled=enabled, **params) as s:
            s.multi_set({b"k%03d" % i: b"a" for i in range(100)})
            s.seal()
            s.multi_set({b"k%03d" % i: b"b" for i in range(60)})  # run 0 now 40% live
            s.seal()
            s.set(b"x", b"1")  # maintenance runs on the first write after a seal
            counts = [r.count for r in s._runs]
            assert counts == ([40, 60] if enabled else [100, 60])
            assert s.stats.merges == int(enabled)
            s._check()
        with HybridLog(path, **params) as s:
            assert s.get(b"k000") == b"b" and s.get(b"k099") == b"a" and s.get(b"x") == b"1"


@pytest.mark.parametrize("large", [255, 256, 257, 70_000])
def test_merge_of_small_value_run_while_keys_live_in_large_value_run(
    tmp_path: Path, large: int
) -> None:
    """Issue 11: a run of values < 256 bytes is merged while the index points some of its
    keys at values of ``large`` bytes in another run (packed locations >= 2**64).

    The issue's reproduction, scaled down: small runs, then a run that moves every 7th
    key to a large value, repeated so that the policy merges the small-value runs.
    """
    params = {"mem_segment_len": 40, "ro_lag_interval": 10, "flush_interval": 10,
              "max_runs_per_level": 3}
    model: dict[bytes, bytes] = {}
    with HybridLog(tmp_path, **params) as s:
        for round_ in range(4):
            for i in range(60):
                s.set(b"k%02d" % i, b"s" * 10)
                model[b"k%02d" % i] = b"s" * 10
            s.seal()
            for i in range(0, 60, 7):
                s.set(b"k%02d" % i, bytes([65 + round_]) * large)
                model[b"k%02d" % i] = bytes([65 + round_]) * large
            s.seal()
        s.set(b"last", b"x")  # the first write after the seals runs the due merges
        model[b"last"] = b"x"
        assert s.stats.merges >= 3
        assert dict(s.items()) == model
        s._check()
    with HybridLog(tmp_path, **params) as s:
        assert dict(s.items()) == model
        s._check()


def live_mask(found: list[int], slot: int, ends: np.ndarray) -> np.ndarray:
    """Which records of the one-segment run in ``slot`` the locations ``found`` point at."""
    return same_locs(found, segment_locs([(slot, 0, 0, len(ends))], ends))


def test_pack_locs_and_live_mask_hold_any_location() -> None:
    """Locations of values of 256 bytes or more exceed 64 bits; both helpers stay exact."""

    def reference(slot: int, lens: list[int]) -> list[int]:
        starts = [sum(lens[:i]) for i in range(len(lens))]
        return [slot | a << SLOT_BITS | n << LEN_SHIFT for a, n in zip(starts, lens, strict=True)]

    for lens in ([0, 1, 255, 0], [0, 255, 256, 257, 65_535, 65_536, 1 << 30, 0]):
        ends = np.cumsum(np.array(lens, dtype=np.uint64), dtype=np.uint64)
        own = reference(7, lens)
        assert pack_locs(7, ends) == own
        other = reference(8, [300] * len(lens))  # the key moved to a large value elsewhere
        for found, expect in (
            (own, [True] * len(lens)),
            (other, [False] * len(lens)),
            ([NO_LOC] * len(lens), [False] * len(lens)),
            ([o if i % 2 else x for i, (o, x) in enumerate(zip(own, other, strict=True))],
             [i % 2 == 1 for i in range(len(lens))]),
        ):
            assert live_mask(found, 7, ends).tolist() == expect
    assert pack_locs(1, np.zeros(0, np.uint64)) == []
    assert live_mask([], 1, np.zeros(0, np.uint64)).tolist() == []


def test_compaction_of_small_value_run_while_keys_live_in_large_value_run(
    tmp_path: Path,
) -> None:
    """Compaction rewrites a run of small values alone while most of its keys have moved
    to a later run of 300-byte values: only the records still live there are copied."""
    params = {"ro_lag_interval": 100, "flush_interval": 100, "mem_segment_len": 200,
              "max_runs_per_level": 50, "compaction_enabled": True}
    with HybridLog(tmp_path, **params) as s:
        s.multi_set({b"k%03d" % i: b"a" for i in range(100)})
        s.seal()
        s.multi_set({b"k%03d" % i: b"L" * 300 for i in range(60)})  # run 0 is 40 % live
        s.seal()
        s.set(b"x", b"1")  # maintenance: compacts run 0
        assert s.stats.merges == 1 and [r.count for r in s._runs] == [40, 60]
        s._check()
    with HybridLog(tmp_path, **params) as s:
        assert s.get(b"k000") == b"L" * 300 and s.get(b"k099") == b"a"
        assert len(dict(s.items())) == 101


def test_merge_policy_levels() -> None:
    assert [run_level(n, 10) for n in (0, 1, 9, 10, 99, 100, 999, 1000, 10_999)] == [
        0, 0, 0, 1, 1, 2, 2, 3, 4]
    assert run_level(8, 2) == 3
    # four small runs (level 0) exceed max 3; the big ones do not
    assert pick_merge([5000, 6000, 3, 4, 5, 6], 3) == [2, 3, 4, 5]
    assert pick_merge([5000, 6000, 3, 4, 5], 3) is None
    # same-level runs need not be adjacent
    assert pick_merge([1, 5000, 2, 1, 2], 3) == [0, 2, 3, 4]
    assert pick_merge([1, 1], 1) == [0, 1]
    assert is_prefix([0, 1, 2]) and not is_prefix([1, 2]) and not is_prefix([0, 2])
    assert not is_prefix([])


# ---------------------------------------------------------------------- format and corruption


def test_run_file_round_trip_and_footer(tmp_path: Path) -> None:
    keys = [b"a", b"bb" * 200, b"c"]  # mixed key widths: u16 key lengths
    values = [b"1" * 5000, b"", b"3"]  # a value spanning two pages and a tombstone
    data = encode_run(keys, b"".join(values), value_ends(values))
    path = tmp_path / "00000001-00000000.hlog"
    path.write_bytes(data)
    n, vlen, kw, ew, _, version, _, magic = FOOTER.unpack_from(data, len(data) - FOOTER.size)
    assert (n, vlen, kw, ew, version, magic) == (3, 5001, 2, 4, 1, RUN_MAGIC)
    run = RunFile(path, 0)
    try:
        got_keys, ends = run.index()
        assert got_keys == keys and ends.tolist() == [5000, 5000, 5001]
        assert run.pending == 2
        assert run.read(0, 5000) == values[0] and run.pending == 0
        assert run.read(5000, 5001) == b"3"
    finally:
        run.close()


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    data = bytearray(encode_run([b"k"], b"v", value_ends([b"v"])))
    foot = len(data) - FOOTER.size
    n, vlen, kw, ew, res, _, _, magic = FOOTER.unpack_from(data, foot)
    head = struct.pack("<QQBBHI", n, vlen, kw, ew, res, 99)
    crc = zlib.crc32(head, zlib.crc32(bytes(data[vlen:foot])))
    data[foot:] = head + struct.pack("<I4s", crc, magic)
    path = tmp_path / "00000001-00000000.hlog"
    path.write_bytes(bytes(data))
    with pytest.raises(FormatVersionError, match="format version 99"):
        RunFile(path, 0)


def damage_sealed_run(tmp_path: Path, model: dict[bytes, bytes], params: dict[str, int],
                      offset: int) -> str:
    """Write ``model``, seal it as one run, flip a byte of that run at ``offset``; its name."""
    with HybridLog(tmp_path, **params) as s:
        s.multi_set(model)
        (name,) = [n for n in s.seal() if n.endswith(RUN_KIND)]
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    return name


def test_damaged_value_page_is_reported_on_get(tmp_path: Path) -> None:
    model = {b"k%05d" % i: b"%08d" % i for i in range(2000)}  # 16,000 value bytes: 4 pages
    params = {"ro_lag_interval": 5000, "flush_interval": 5000, "mem_segment_len": 10_000}
    name = damage_sealed_run(tmp_path, model, params, PAGE_SIZE + 10)  # 2nd page of values
    with HybridLog(tmp_path, **params) as s:
        run = next(r for r in s._runs if r.name == name)
        keys, ends = run.index()
        starts = [0, *ends[:-1].tolist()]
        in_page_0 = keys[next(i for i, e in enumerate(ends.tolist()) if e <= PAGE_SIZE)]
        in_page_1 = keys[next(i for i, a in enumerate(starts) if a >= PAGE_SIZE + 16)]
        assert s.get(in_page_0) == model[in_page_0]  # an intact page reads fine
        with pytest.raises(CorruptionError, match=name.split(".")[0]) as err:
            s.get(in_page_1)
        assert err.value.check == "crc" and err.value.offset == PAGE_SIZE
        with pytest.raises(CorruptionError, match="value page 1"):
            s.multi_get([in_page_1])


def test_failed_flush_or_merge_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    import raykv.engines.hybridlog.runset as engine_module  # where runs are written

    real_write = engine_module.write_file
    calls = {"n": 0, "fail_at": {3, 7}}

    def flaky_write(path: Path, data: bytes, *, sync: bool = True) -> None:
        calls["n"] += 1
        if calls["n"] in calls["fail_at"]:
            msg = "disk full (injected)"
            raise OSError(msg)
        real_write(path, data, sync=sync)

    monkeypatch.setattr(engine_module, "write_file", flaky_write)
    model: dict[bytes, bytes] = {}
    params = {"ro_lag_interval": 20, "flush_interval": 20, "mem_segment_len": 40,
              "max_runs_per_level": 2}
    failures = 0
    with HybridLog(tmp_path, **params) as s:
        for i in range(400):
            k, v = b"k%03d" % (i % 150), b"v%d" % i
            try:
                s.set(k, v)
            except OSError:
                failures += 1  # the write itself is in memory; the flush will be retried
            model[k] = v
            if i % 97 == 0:
                try:
                    s.seal()
                except OSError:
                    failures += 1
            assert s.get(k) == v
        assert failures == 2
        assert dict(s.items()) == model
        s._check()
    with HybridLog(tmp_path, **params) as s:
        assert dict(s.items()) == model
