"""``raykv.runtime.aligner.BarrierAligner`` without Ray: examples and a plain-Python model.

The model: an item's *segment* is the number of barriers its input sent before it.
After every ``receive``, what the aligner has emitted so far must equal the items
received so far, stably sorted by segment, keeping only segments up to the number of
completed epochs, with ``Aligned(e)`` after the last item of each completed segment.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.runtime.aligner import BARRIER, DATA, FINISH, Aligned, BarrierAligner, Data


def run(aligner: BarrierAligner, items: list[tuple[int, int, Any]]) -> list[Any]:
    out: list[Any] = []
    for kind, input_id, payload in items:
        out.extend(aligner.receive(kind, input_id, payload))
    return out


def test_one_input_passes_everything_through_in_order() -> None:
    a = BarrierAligner(1)
    got = run(a, [(DATA, 0, "a"), (BARRIER, 0, 1), (DATA, 0, "b"), (FINISH, 0, 2)])
    assert got == [Data(0, "a"), Aligned(1, False), Data(0, "b"), Aligned(2, True)]


def test_an_input_past_the_barrier_is_held_until_all_inputs_sent_it() -> None:
    a = BarrierAligner(2)
    got = run(a, [(DATA, 0, "a0"), (BARRIER, 0, 7), (DATA, 0, "a1"), (DATA, 1, "b0")])
    assert got == [Data(0, "a0"), Data(1, "b0")]
    assert a.aligning == (BARRIER, 7) and a.held == 1
    got = run(a, [(BARRIER, 1, 7)])
    assert got == [Aligned(7, False), Data(0, "a1")]
    assert a.aligning is None and a.held == 0


def test_each_aligned_epoch_carries_the_marks_its_own_barriers_brought() -> None:
    """Input 0 runs an epoch ahead: its barrier(2) mark must not leak into epoch 1."""
    a = BarrierAligner(2)
    out: list[Any] = []
    for kind, i, epoch, mark in [(BARRIER, 0, 1, "a1"), (DATA, 0, "x", None),
                                 (BARRIER, 0, 2, "a2"), (BARRIER, 1, 1, "b1"),
                                 (BARRIER, 1, 2, "b2")]:
        out.extend(a.receive(kind, i, epoch, mark))
    aligned = [o for o in out if isinstance(o, Aligned)]
    assert [(o.epoch, o.marks) for o in aligned] == [(1, ("a1", "b1")), (2, ("a2", "b2"))]


def test_held_items_replay_through_the_next_barrier() -> None:
    a = BarrierAligner(2)
    run(a, [(BARRIER, 0, 1), (DATA, 0, "x"), (BARRIER, 0, 2), (DATA, 0, "y")])
    got = run(a, [(BARRIER, 1, 1)])
    # input 0 is past barrier 2 again after the replay: "y" stays held
    assert got == [Aligned(1, False), Data(0, "x")]
    assert a.aligning == (BARRIER, 2) and a.held == 1
    assert run(a, [(BARRIER, 1, 2)]) == [Aligned(2, False), Data(0, "y")]


def test_unknown_input_and_mismatched_barriers_raise() -> None:
    with pytest.raises(RuntimeError, match="shard s: barrier from unknown input 3"):
        run(BarrierAligner(2, "shard s"), [(BARRIER, 3, 1)])
    with pytest.raises(RuntimeError, match=r"barrier mismatch: aligning \(1, 1\), input 1"):
        run(BarrierAligner(2, "shard s"), [(BARRIER, 0, 1), (BARRIER, 1, 2)])
    with pytest.raises(RuntimeError, match="barrier mismatch"):
        run(BarrierAligner(2), [(BARRIER, 0, 1), (FINISH, 1, 1)])


def model(num_inputs: int, received: list[tuple[int, int, Any]]) -> list[Any]:
    """What the aligner must have emitted after ``received`` (see the module docstring)."""
    sent = [0] * num_inputs  # barriers sent per input so far
    tagged: list[tuple[int, Any]] = []  # (segment, item) in arrival order
    barriers: dict[int, list[tuple[int, int]]] = {}  # segment -> (kind, epoch) per input
    for kind, input_id, payload in received:
        seg = sent[input_id]
        if kind == DATA:
            tagged.append((seg, Data(input_id, payload)))
        else:
            barriers.setdefault(seg, []).append((kind, payload))
            sent[input_id] += 1
    complete = 0
    while len(barriers.get(complete, [])) == num_inputs:
        complete += 1
    out: list[Any] = []
    for seg in range(complete + 1):
        out.extend(item for s, item in tagged if s == seg)
        if seg < complete:
            kind, epoch = barriers[seg][0]
            out.append(Aligned(epoch, kind == FINISH))
    return out


@st.composite
def interleavings(draw: st.DrawFn) -> tuple[int, list[tuple[int, int, Any]]]:
    """Several inputs, each sending data and the same barriers; merged in a random order."""
    num_inputs = draw(st.integers(1, 4))
    epochs = draw(st.integers(0, 4))
    final = draw(st.booleans())
    streams: list[list[tuple[int, int, Any]]] = []
    for i in range(num_inputs):
        stream: list[tuple[int, int, Any]] = []
        for e in range(1, epochs + 1):
            n = draw(st.integers(0, 3))
            stream.extend((DATA, i, f"i{i}e{e}r{k}") for k in range(n))
            kind = FINISH if final and e == epochs else BARRIER
            stream.append((kind, i, e))
        tail = 0 if final and epochs else draw(st.integers(0, 3))
        stream.extend((DATA, i, f"i{i}tail{k}") for k in range(tail))
        streams.append(stream)
    merged: list[tuple[int, int, Any]] = []
    heads = [0] * num_inputs
    while any(h < len(s) for h, s in zip(heads, streams, strict=True)):
        live = [i for i in range(num_inputs) if heads[i] < len(streams[i])]
        i = draw(st.sampled_from(live))
        merged.append(streams[i][heads[i]])
        heads[i] += 1
    return num_inputs, merged


@settings(max_examples=300, deadline=None)
@given(interleavings())
def test_matches_the_model_after_every_item(case: tuple[int, list[tuple[int, int, Any]]]) -> None:
    num_inputs, items = case
    a = BarrierAligner(num_inputs)
    out: list[Any] = []
    for n, (kind, input_id, payload) in enumerate(items, 1):
        out.extend(a.receive(kind, input_id, payload))
        assert out == model(num_inputs, items[:n])
    # every input's items came out, each input's in its order
    for i in range(num_inputs):
        assert [d.batch for d in out if isinstance(d, Data) and d.input_id == i] == [
            p for k, j, p in items if j == i and k == DATA]
    assert a.aligning is None and a.held == 0
