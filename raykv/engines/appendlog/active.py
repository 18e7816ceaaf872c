"""AppendLog's active run: the in-memory buffer new records are appended to.

The active run is an anonymous memory map that grows as needed; its bytes are written to
the run's file in ``FLUSH_BYTES`` chunks (the file name is taken on the first chunk), and
when it reaches ``threshold`` bytes, or at a non-idle ``seal()``, it is closed: its index
section and footer are written and the file is memory-mapped as a closed run. Every write
takes the slow path (``_before_write``) only when the engine is closed or a merge is due.

Cost: a close writes the unwritten tail, an index section (C-level passes over the run's
record lengths) and a footer; it never merges.
"""

from __future__ import annotations

import mmap
from array import array
from operator import add

import numpy as np

from raykv.engines.appendlog.runfile import (
    FOOTER,
    RUN_KIND,
    Run,
    RunWriter,
    encode_index,
    keys_in_index,
    map_file,
    record_columns,
)
from raykv.engines.appendlog.runset import RunSet

FLUSH_BYTES = 1 << 20  # the active run is written to its file in chunks of this size


class ActiveRun(RunSet):
    """The active run of an ``AppendLog`` (a base class)."""

    def _before_write(self) -> None:
        """Slow path of every write: refuse if closed, run a due merge."""
        self._ensure_open()
        self._run_merges()

    def _after_append(self) -> None:
        """The active run reached a flush point: close it at ``threshold``, else flush."""
        if self._pos >= self.threshold:
            self._close_active()
            if self._plan_merge() is not None:
                self._slow = True
                self._run_merges()
        else:
            self._flush_chunk()

    def _new_active(self) -> None:
        if self._amm.closed:
            self._acap = min(self.threshold, 1 << 26) + (1 << 16)
            self._amm = mmap.mmap(-1, self._acap)
        self._aslot = self._alloc_slot(self._amm, "<active run, in memory>")
        self._abase = self._aslot  # a location's low bits
        self._aname = None
        self._writer = None
        self._pos = 0
        self._flushed = 0
        self._flush_at = min(self.threshold, FLUSH_BYTES)
        self._alens = array("I")
        self._aklens = array("I")  # key and value lengths of the active run's records
        self._avlens = array("I")

    def _grow(self, end: int) -> None:
        """Replace the active buffer by a larger one holding the same bytes."""
        cap = max(2 * self._acap, end + (1 << 16))
        new = mmap.mmap(-1, cap)
        new[: self._pos] = self._amm[: self._pos]
        self._amm.close()
        self._amm = new
        self._acap = cap
        self._bufs[self._aslot] = new

    def _flush_chunk(self) -> None:
        """Write the active run's unwritten bytes to its file (the name is taken lazily)."""
        if self._writer is None:
            self._aname = self._new_file(RUN_KIND)
            self._writer = RunWriter(self.data_dir / self._aname)
        if self._pos > self._flushed:
            self._writer.write(self._amm[self._flushed : self._pos])
            self._flushed = self._pos
        self._flush_at = min(self.threshold, self._pos + FLUSH_BYTES)

    def _close_active(self) -> None:
        """Make the (non-empty) active run an immutable run; start a new one.

        Cost: the unwritten tail, an index section (a few C-level passes over the run's
        record lengths) and a footer are written; no merge.
        """
        assert self._pos
        self._flush_chunk()
        assert self._writer is not None and self._aname is not None
        count = len(self._alens)
        amm = self._amm
        # the columns read in place (the arrays are replaced, never resized, below)
        klens: list[int] | np.ndarray = np.frombuffer(self._aklens, dtype=np.uint32)
        vlens: list[int] | np.ndarray = np.frombuffer(self._avlens, dtype=np.uint32)
        keys: list[bytes] | None = None
        if keys_in_index(vlens):
            klens, vlens, kstarts = record_columns(amm, self._alens.tolist())
            keys = list(map(amm.__getitem__, map(slice, kstarts, map(add, kstarts, klens))))
        size = self._writer.finish(count, encode_index(klens, vlens, keys))
        name = self._aname
        self._written(name, size)
        run = Run(name, self._aslot, self._pos, size - self._pos - FOOTER.size, count,
                   size, self._writer.crc, verified=True)
        self._bufs[self._aslot] = map_file(self.data_dir / name)
        self._slot_names[self._aslot] = name
        self._runs.append(run)
        self._uncommitted = True
        self._writer = None
        self._new_active()
