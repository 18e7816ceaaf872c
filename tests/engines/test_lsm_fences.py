"""The LSM run's fence pointers (``raykv/engines/lsm/fences.py``) against ``bisect``.

The model is the list of fence keys and ``bisect_right``: for any sorted set of fences
and any key (of the fences' length or not, with their common prefix or not, a fence
itself, a fence with a zero byte added or removed), ``position`` and ``positions`` must
give exactly ``bisect_right(fences, key)``, in both the packed and the list form.
"""

from __future__ import annotations

import sys
from bisect import bisect_right
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.engines.lsm import LSMTree
from raykv.engines.lsm.fences import ListFences, PackedFences, fences_of

# few distinct byte values, so that fences share prefixes and zero bytes are common
BYTE = st.sampled_from([0, 1, 2, 48, 254, 255])


def key_of(width: int) -> st.SearchStrategy[bytes]:
    return st.lists(BYTE, min_size=width, max_size=width).map(bytes)


@st.composite
def fence_sets(draw: st.DrawFn) -> list[bytes]:
    """Sorted distinct fences: one width (often packed), one width after a long shared
    prefix, or mixed widths (a list)."""
    kind = draw(st.sampled_from(["fixed", "prefixed", "mixed"]))
    if kind == "mixed":
        keys = st.integers(1, 6).flatmap(key_of)
    else:
        width = draw(st.integers(1, 12))
        keys = key_of(width)
        if kind == "prefixed":
            keys = keys.map(lambda k: b"user_" + k)
    return sorted(set(draw(st.lists(keys, min_size=1, max_size=40))))


def probes(fences: list[bytes], extra: list[bytes]) -> list[bytes]:
    near = [f + b"\0" for f in fences] + [f[:-1] for f in fences if len(f) > 1]
    return fences + near + extra + [b"user", b"user_", b"\xff" * 14]


@settings(max_examples=300, deadline=None)
@given(fence_sets(), st.lists(st.integers(1, 14).flatmap(key_of), max_size=30))
def test_positions_equal_bisect_right(fences: list[bytes], extra: list[bytes]) -> None:
    f = fences_of([len(k) for k in fences], b"".join(fences))
    assert list(f) == fences and len(f) == len(fences)
    keys = probes(fences, extra)
    want = [bisect_right(fences, k) for k in keys]
    assert [f.position(k) for k in keys] == want
    assert f.positions(keys) == want
    assert f.positions(keys * 4) == want * 4  # the vectorized path (16 keys or more)


def test_fixed_width_keys_are_packed_in_8_bytes_per_block() -> None:
    fences = [i.to_bytes(8, "big") for i in range(0, 10_000_000, 7)]
    packed = fences_of([8] * len(fences), b"".join(fences))
    assert isinstance(packed, PackedFences)
    listed = ListFences(fences)
    assert packed.nbytes < 9 * len(fences) < listed.nbytes / 5
    sample = fences[::97] + [k + b"\0" for k in fences[::89]]
    assert packed.positions(sample) == listed.positions(sample)


def test_fences_that_differ_in_more_than_8_bytes_stay_a_list() -> None:
    fences = [b"a" * 9, b"b" * 9]
    assert isinstance(fences_of([9, 9], b"".join(fences)), ListFences)
    assert isinstance(fences_of([1, 2], b"ab\x00"), ListFences)


def test_an_lsm_of_int_keys_holds_packed_fences(tmp_path: Path) -> None:
    """End to end: runs of 8-byte keys are packed, reads stay exact, memory is smaller."""
    model = {(i * 2654435761 % 2**64).to_bytes(8, "big"): b"v%d" % i for i in range(60_000)}
    with LSMTree(tmp_path, memtable_bytes_limit=64 * 1024) as s:
        s.multi_set(model)
        s.seal()
        runs = [r for level in s._levels for r in level]
        assert runs and all(isinstance(r.fences, PackedFences) for r in runs)
        keys = list(model)[::7]
        assert s.multi_get(keys) == [model[k] for k in keys]
        assert [s.get(k) for k in keys[:500]] == [model[k] for k in keys[:500]]
        absent = [k for k in (b"\x00" * 7 + b"\x01", b"\xff" * 8, b"short") if k not in model]
        assert [s.get(k) for k in absent] == [b""] * len(absent) == s.multi_get(absent)
        blocks = sum(len(r.fences) for r in runs)
        assert sum(r.fences.nbytes for r in runs) < 9 * blocks + 200 * len(runs)
        s._check()
    assert sys.getsizeof(b"12345678") > 40  # what a list form would pay per block
