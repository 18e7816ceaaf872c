"""HybridLog merges that splice whole runs instead of moving their index entries.

A merge member whose every record is live and holds a value gains nothing from being
rewritten record by record: the new run would hold exactly its records. Such a member
is *spliced*: its values region and its index section (key lengths, keys, value ends)
are copied whole, after the records rewritten from the other members, and its slots
become views (``runset.RunView``) that read from the new run at the member's offset.
So the index entries of its keys stay as they are, and a merge of fresh runs (the
common case under bulk writes: a level of runs whose keys were written once) costs a
copy of their bytes and a crc32 per 4 KiB page, with no per-record Python step.

The new run is an ordinary run file (``FORMAT.md`` "HybridLog", unchanged): its keys
are unique because every spliced record is live (the index points at it) and so is
every rewritten one. Views live in memory only: a reopen loads the run's index section
under one slot. ``RunFile.segments`` lists, per stretch of records, the slot their
index entries name and the shift of their offsets; a later merge finds their live
records through it, and dropping the run frees every slot it lists.

Bounds: a run lists at most ``MAX_SEGMENTS`` segments, and splicing stops while a
quarter of the slot space is in use, so slots never run out (``MAX_SLOTS``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from raykv.engines.hybridlog.runfile import MAX_SLOTS, RunFile, encode_run_columns, pack_locs
from raykv.engines.hybridlog.runset import RunView

if TYPE_CHECKING:
    from raykv.engines.hybridlog.runset import RunSet

MAX_SEGMENTS = 64  # most segments (slots) one run's records may name


class Splicer:
    """Collects the members of one merge that are spliced, then writes the merged run."""

    def __init__(self, engine: RunSet) -> None:
        self.engine = engine
        self.spliced: list[RunFile] = []
        self._segments = 1  # the new run's own segment (rewritten records)

    def take(self, run: RunFile, live: np.ndarray, lens: np.ndarray) -> bool:
        """Splice ``run`` if every record is live and holds a value, within the bounds."""
        if not live.all() or not lens.all():
            return False
        n = len(run.segments)
        if self._segments + n > MAX_SEGMENTS or self.engine._slots_in_use() >= MAX_SLOTS // 4:
            return False
        self.spliced.append(run)
        self._segments += n
        return True

    def write(self, keys: list[bytes], blobs: list[bytes], lens: list[np.ndarray]
              ) -> tuple[RunFile, list[int]]:
        """Write the merged run: ``keys`` rewritten (values ``blobs``), then the spliced runs.

        Returns the new run and the locations of ``keys`` in it. Nothing in memory changes
        before the file is written and opened; then the spliced runs' slots become views.
        """
        klens: list[np.ndarray] = []
        key_parts: list[bytes] = []
        values: list[bytes] = []
        ends: list[np.ndarray] = []
        n_new = len(keys)
        at = 0  # value bytes before the next part
        if keys:
            klens.append(np.fromiter(map(len, keys), dtype=np.int64, count=n_new))
            key_parts.append(b"".join(keys))
            blob = b"".join(blobs)
            values.append(blob)
            ends.append(np.cumsum(np.concatenate(lens), dtype=np.uint64))
            at = len(blob)
        offsets: list[tuple[int, int]] = []
        first = n_new
        for run in self.spliced:
            run_klens, run_keys, run_ends = run.columns()
            offsets.append((first, at))
            klens.append(run_klens)
            key_parts.append(run_keys)
            values.append(run.mm[: run.values_len])
            ends.append(run_ends + np.uint64(at))
            first += run.count
            at += run.values_len
        ends_all = np.concatenate(ends)
        data = encode_run_columns(np.concatenate(klens), b"".join(key_parts),
                                  b"".join(values), ends_all)
        new = self.engine._write_encoded(data)
        # the run is written and open: from here on nothing can fail half-way
        segments = [(new.slot, 0, 0, n_new)] if n_new else []
        slots = self.engine._slots
        for run, (first, at) in zip(self.spliced, offsets, strict=True):
            for slot, shift, lo, hi in run.segments:
                moved = shift + at
                segments.append((slot, moved, lo + first, hi + first))
                slots[slot] = RunView(new, moved, slot, int(ends_all[hi + first - 1]) - moved)
        new.segments = segments
        return new, pack_locs(new.slot, ends_all[:n_new])

    def retire(self, run: RunFile) -> None:
        """Close spliced ``run`` (its views read from the new run); free an unused own slot.

        A run's own slot is unused when every record of it came from a splice (it wrote
        no record under its own slot): no view was made of it.
        """
        run.close()
        if all(slot != run.slot for slot, *_ in run.segments):
            self.engine._free_slot(run.slot, run)
