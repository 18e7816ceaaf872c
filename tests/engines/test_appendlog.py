from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raykv.engines import keyindex
from raykv.engines.appendlog import AppendLog
from raykv.engines.appendlog import runfile as al
from raykv.engines.memonly import MemOnly
from raykv.errors import CorruptionError
from tests.engines.contract import KVStoreContract


class TestAppendLog(KVStoreContract):
    engine_cls = AppendLog
    small_params = {"threshold": 1024, "max_runs_per_level": 3}


def run_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.run"))


def record_offset(store: AppendLog, key: bytes) -> tuple[str, int, int]:
    """(run file name, offset, length) of the record the index holds for ``key``."""
    loc = store._index[key]
    slot = loc & al.SLOT_MASK
    name = store._slot_names[slot]
    assert name is not None and name.endswith(".run")
    return name, loc >> al.SLOT_BITS & al.OFF_MASK, loc >> al.N_SHIFT


def test_bad_parameters_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="threshold=0"):
        AppendLog(tmp_path / "a", threshold=0)
    with pytest.raises(TypeError, match="threshold"):
        AppendLog(tmp_path / "b", threshold="big")
    with pytest.raises(TypeError, match="threshold"):
        AppendLog(tmp_path / "c", threshold=True)
    with pytest.raises(ValueError, match="max_runs_per_level=1"):
        AppendLog(tmp_path / "d", max_runs_per_level=1)


def test_directory_of_another_engine_is_refused(tmp_path: Path) -> None:
    with MemOnly(tmp_path) as m:
        m.set(b"a", b"1")
    with pytest.raises(ValueError, match="memonly"):
        AppendLog(tmp_path)
    with MemOnly(tmp_path) as m:  # untouched, and the lock was released
        assert m.get(b"a") == b"1"


# ---------------------------------------------------------------------- runs and roll-over


def test_run_rolls_over_exactly_at_threshold(tmp_path: Path) -> None:
    # every record: 2-byte header + 4-byte key + 10-byte value + 4-byte crc = 20 bytes
    with AppendLog(tmp_path, threshold=1000, max_runs_per_level=50) as s:
        for i in range(49):
            s.set(b"k%03d" % i, b"v" * 10)
        assert s._runs == [] and s._pos == 980
        s.set(b"k049", b"v" * 10)  # reaches 1000 bytes: the run closes
        assert [(r.count, r.data_len) for r in s._runs] == [(50, 1000)] and s._pos == 0
        # a batch is split at the same record boundaries
        s.multi_set([(b"m%03d" % i, b"w" * 10) for i in range(120)])
        assert [(r.count, r.data_len) for r in s._runs] == [(50, 1000)] * 3
        assert s._pos == 20 * 20
        files = s.seal()
        assert [r.count for r in s._runs] == [50, 50, 50, 20]
        assert len([n for n in files if n.endswith(".run")]) == 4
        s._check()
    with AppendLog(tmp_path, threshold=1000, max_runs_per_level=50) as s:
        assert len(dict(s.items())) == 170
        assert s.get(b"k049") == b"v" * 10 and s.get(b"m119") == b"w" * 10


def test_a_large_record_grows_the_active_buffer(tmp_path: Path) -> None:
    big = os.urandom(300_000)  # larger than the initial buffer for threshold=1000
    with AppendLog(tmp_path, threshold=1000) as s:
        s.set(b"small", b"x")
        s.set(b"big", big)
        assert s.get(b"big") == big and s.get(b"small") == b"x"
        s.multi_set([(b"big2", big), (b"big3", big[:200])])
        assert s.multi_get([b"big2", b"big3", b"small"]) == [big, big[:200], b"x"]
    with AppendLog(tmp_path, threshold=1000) as s:
        assert s.get(b"big") == big and s.get(b"big3") == big[:200]
        s._check()


def test_seal_never_merges_the_next_write_does(tmp_path: Path) -> None:
    with AppendLog(tmp_path, threshold=1 << 20, max_runs_per_level=3) as s:
        for r in range(3):
            s.multi_set({b"k%04d" % i: b"r%d" % r for i in range(500)})
            s.seal()
        assert s.stats.merges == 0 and len(s._runs) == 3  # a full level, merge is due
        before = sorted(os.listdir(tmp_path))
        assert s.seal() == s.live_files()  # idle: writes nothing, merges nothing
        assert sorted(os.listdir(tmp_path)) == before and s.stats.merges == 0
        s.set(b"k0000", b"new")  # the write path performs the merge first
        assert s.stats.merges == 1 and len(s._runs) == 1
        assert s.get(b"k0000") == b"new" and s.get(b"k0001") == b"r2"
        s._check()


def test_rejected_batch_does_not_run_the_due_merge(tmp_path: Path) -> None:
    """A multi_set that fails validation changes nothing, not even a merge that is due."""
    with AppendLog(tmp_path, threshold=1 << 20, max_runs_per_level=3) as s:
        for r in range(3):
            s.multi_set({b"k%04d" % i: b"r%d" % r for i in range(50)})
            files = s.seal()
        listing = sorted(os.listdir(tmp_path))
        with pytest.raises(ValueError, match="key must not be empty"):
            s.multi_set([(b"k0000", b"new"), (b"", b"x")])
        assert s.stats.merges == 0 and sorted(os.listdir(tmp_path)) == listing
        assert s.seal() == files and s.get(b"k0000") == b"r2"
        s.multi_set([(b"k0000", b"new")])  # a valid batch performs it
        assert s.stats.merges == 1 and s.get(b"k0000") == b"new"
        s._check()


# ---------------------------------------------------------------------- deletes


def test_delete_survives_seal_reopen_and_merges_over_older_runs(tmp_path: Path) -> None:
    params = {"threshold": 1 << 20, "max_runs_per_level": 50}  # merges only when asked
    s = AppendLog(tmp_path, **params)
    s.multi_set({b"victim": b"old", **{b"a%03d" % i: b"x" for i in range(100)}})
    s.seal()  # run 0 holds victim=old
    s.multi_set({b"b%03d" % i: b"y" for i in range(100)})
    s.seal()  # run 1
    s.delete(b"victim")
    s.seal()  # run 2 holds the tombstone
    s.multi_set({b"c%03d" % i: b"z" for i in range(100)})
    s.seal()  # run 3
    s.close()

    s = AppendLog(tmp_path, **params)
    assert s.get(b"victim") == b"" and b"victim" not in dict(s.items())
    assert len(s._runs) == 4
    # merge runs 1..3: run 0 (outside the merge, older) still holds victim=old, so the
    # tombstone must be copied into the merged run
    s._merge(1, 4)
    assert len(s._runs) == 2 and b"victim" in s._index
    s._check()
    s.close()

    s = AppendLog(tmp_path, **params)
    assert s.get(b"victim") == b"" and s.multi_get([b"victim"]) == [b""]
    assert b"victim" not in dict(s.items())
    # a merge of every run may drop the tombstone: nothing older can hold the key
    s._merge(0, len(s._runs))
    assert b"victim" not in s._index
    s._check()
    s.close()

    with AppendLog(tmp_path, **params) as s:
        assert s.get(b"victim") == b""
        model = {b"a%03d" % i: b"x" for i in range(100)}
        model |= {b"b%03d" % i: b"y" for i in range(100)}
        model |= {b"c%03d" % i: b"z" for i in range(100)}
        assert dict(s.items()) == model


def test_deletes_survive_policy_merges(tmp_path: Path) -> None:
    rng = random.Random(4)
    model: dict[bytes, bytes] = {}
    params = {"threshold": 2048, "max_runs_per_level": 2}
    s = AppendLog(tmp_path, **params)
    for step in range(30):
        for _ in range(200):
            k = b"k%03d" % rng.randrange(300)
            if rng.random() < 0.3:
                s.delete(k)
                model.pop(k, None)
            else:
                v = rng.randbytes(rng.randrange(1, 12))
                s.set(k, v)
                model[k] = v
        if step % 4 == 0:
            s.seal()
        if step % 7 == 3:
            s.close()
            s = AppendLog(tmp_path, **params)
        assert dict(s.items()) == model
    assert s.stats.merges > 0
    s.close()
    with AppendLog(tmp_path, **params) as s:
        assert dict(s.items()) == model
        s._check()


# ---------------------------------------------------------------------- restart from hints


def test_restart_reads_hints_not_records(tmp_path: Path) -> None:
    """Values > 32 bytes: keys live in the index section; a damaged value is found on read."""
    model = {b"key%04d" % i: b"value-%04d-" % i + b"p" * 40 for i in range(2000)}
    with AppendLog(tmp_path, threshold=1 << 20) as s:
        s.multi_set(model)
        s.seal()
        name, off, n = record_offset(s, b"key0777")
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    data[off + n - 10] ^= 0xFF  # a byte of the value, not of the index section
    path.write_bytes(bytes(data))

    with AppendLog(tmp_path, threshold=1 << 20) as s:  # open succeeds: only hints are read
        assert s.get(b"key0001") == model[b"key0001"]
        with pytest.raises(CorruptionError, match=name.split(".")[0]) as exc:
            s.get(b"key0777")
        assert exc.value.check == "crc" and exc.value.offset == off
        with pytest.raises(CorruptionError, match=name.split(".")[0]):
            s.multi_get([b"key0001", b"key0777"])
        with pytest.raises(CorruptionError, match="records checksum"):
            s.items()


def test_small_value_runs_are_checked_whole_at_open(tmp_path: Path) -> None:
    """Values <= 32 bytes: keys are read in place, so open checks the run's record crc."""
    with AppendLog(tmp_path, threshold=1 << 20) as s:
        s.multi_set({b"k%04d" % i: b"v%04d" % i for i in range(2000)})
        s.seal()
        name, off, n = record_offset(s, b"k0777")
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    data[off + n - 5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match=name.split(".")[0]):
        AppendLog(tmp_path, threshold=1 << 20)


def test_superseded_record_damage_is_reported_by_items(tmp_path: Path) -> None:
    model = {b"key%04d" % i: b"first-" + b"p" * 40 for i in range(500)}
    with AppendLog(tmp_path, threshold=1 << 20, max_runs_per_level=10) as s:
        s.multi_set(model)
        s.seal()
        name, off, n = record_offset(s, b"key0100")
        s.set(b"key0100", b"second")  # the old record is now dead
        model[b"key0100"] = b"second"
        s.seal()
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    data[off + n - 8] ^= 0x10
    path.write_bytes(bytes(data))
    with AppendLog(tmp_path, threshold=1 << 20, max_runs_per_level=10) as s:
        assert s.multi_get(list(model)) == list(model.values())  # live records are fine
        with pytest.raises(CorruptionError, match=name.split(".")[0]):
            s.items()


def test_hint_damage_is_reported_at_open(tmp_path: Path) -> None:
    with AppendLog(tmp_path) as s:
        s.multi_set({b"key%04d" % i: b"p" * 50 for i in range(300)})
        s.seal()
        run = s._runs[0]
    path = tmp_path / run.name
    data = bytearray(path.read_bytes())
    data[run.data_len + 3] ^= 0x01  # inside the index section
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="index section checksum"):
        AppendLog(tmp_path)


# ---------------------------------------------------------------------- crashes


def test_torn_active_run_after_kill_is_discarded(tmp_path: Path) -> None:
    """SIGKILL while the active run is partly on disk: reopen gives the sealed state."""
    script = textwrap.dedent(f"""
        import os, signal
        from raykv.engines.appendlog import AppendLog
        s = AppendLog({str(tmp_path)!r}, threshold=64 << 20)
        for i in range(300):
            s.set(b"k%05d" % i, b"sealed%05d" % i + b"-" * 990)
        s.seal()
        for i in range(3000):  # > 2 MiB: flushed to the active run's file in 1 MiB chunks
            s.set(b"k%05d" % (i % 600), b"later%05d" % i + b"+" * 990)
        print(s._aname, s._flushed, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, cwd=Path(__file__).parents[2])
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    active, flushed = proc.stdout.split()
    torn = tmp_path / active
    assert torn.stat().st_size == int(flushed) >= 1 << 20  # records, no index, no footer
    # make the tail torn mid-record as well
    with open(torn, "ab") as f:
        f.write(b"\x05\x7f" + b"half a record")
    sealed = {b"k%05d" % i: b"sealed%05d" % i + b"-" * 990 for i in range(300)}
    with AppendLog(tmp_path, threshold=64 << 20) as s:
        assert dict(s.items()) == sealed
        s._check()
    assert not torn.exists()


# ---------------------------------------------------------------------- space and memory


def test_merges_bound_runs_and_disk_under_overwrites(tmp_path: Path) -> None:
    rng = random.Random(8)
    params = {"threshold": 4096, "max_runs_per_level": 4}
    keys = [b"key%03d" % i for i in range(200)]
    live_bytes = 200 * (2 + 6 + 20 + 4)
    written = 0
    with AppendLog(tmp_path, **params) as s:
        for rnd in range(100):
            s.multi_set({k: rng.randbytes(20) for k in keys})
            written += live_bytes
            if rnd % 3 == 0:
                s.seal()
            disk = sum(p.stat().st_size for p in run_files(tmp_path))
            assert len(s._runs) <= 2 * params["max_runs_per_level"], len(s._runs)
            # at most ~3x the live records (FULL_MERGE_RATIO) plus young runs
            bound = 3 * live_bytes + 2 * params["threshold"]
            assert disk <= bound, (rnd, disk)
        assert written > 20 * bound  # superseded records were reclaimed
        assert s.stats.merges > 10
        s._check()


@pytest.mark.parametrize(("fmt", "per_key"), [
    (b"a longer key%06d", 80),  # 18-byte keys, a dict: its slot, the key and the location
    (b"key%06d", 25),  # 9-byte keys, a KeyIndex's wide table: 25-byte slots, load <= 1/2
    (b"key%05d", 16),  # 8-byte keys, a KeyIndex: two uint64 words, at load 1/2 or less
])
def test_sizeof_grows_with_live_keys_not_overwrites(tmp_path: Path, fmt: bytes, per_key: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyindex, "PROMOTE_WIDE_MIN", 0)  # 9-byte keys: a table, though small
    with AppendLog(tmp_path, threshold=64 << 10) as s:
        s.multi_set({fmt % i: b"v" * 8 for i in range(5000)})
        base = s.__sizeof__()
        for r in range(20):
            s.multi_set({fmt % i: b"w%07d" % r for i in range(5000)})
            assert s.__sizeof__() <= base * 1.1 + (64 << 10)
        s.multi_set({fmt % (i + 50_000): b"v" * 8 for i in range(5000)})
        grown = s.__sizeof__()
        assert grown - base >= 5000 * per_key
        assert s.__sizeof__() == s.__sizeof__()  # estimate is deterministic
        assert isinstance(s._index, dict) == (len(fmt % 0) > 16)


def test_expired_bytes_of_the_whole_store_trigger_a_merge(tmp_path: Path) -> None:
    """Runs each a fifth expired (under the half that merges a run by itself) add up past
    ``STORE_FRACTION`` of the store: the most expired run is merged (issue 13 item 5)."""
    from raykv.engines.appendlog.expire import STORE_FRACTION
    from tests.engines.expiry_contract import disk_bytes, stamped

    assert STORE_FRACTION < 0.2
    with AppendLog(tmp_path, threshold=1 << 20, max_runs_per_level=100) as store:
        for r in range(4):
            store.multi_set([(b"d%d%04d" % (r, i), stamped(10, bytes(100))) for i in range(100)]
                            + [(b"l%d%04d" % (r, i), stamped(10**6, bytes(100)))
                               for i in range(400)])
            store.seal()  # one closed run each
        before = disk_bytes(store)
        store.set_expiry(11)
        store.set(b"x", b"x")  # merges run on the write path
        assert store.stats.expiry_compactions >= 1
        store.seal()
        assert disk_bytes(store) < before
        assert store.get(b"l00000") == stamped(10**6, bytes(100))
        store._check()
        compactions = store.stats.expiry_compactions
        store.set(b"y", b"y")
        assert store.stats.expiry_compactions == compactions  # below the share now, or done
