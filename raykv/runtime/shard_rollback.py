"""A shard's side of local recovery: still, roll back in place, keep epochs' files linked.

Contract: the :class:`LocalRollback` mixin of :class:`~raykv.runtime.shard.ShardWorker`
(docs/recovery.md, "Local recovery"). ``quiesce`` (the ``"ping"`` group) stops an
attempt's work without stopping the process; ``reset(spec, plan)`` (the data thread)
makes the worker the shard of a new attempt, rolled back to the committed epoch from its
own files; ``warm`` readies a standby. After every upload the shard keeps hard links of
the last ``spec.kept_epochs`` uploaded epochs' files (``_prune_links``), so that a
rollback finds the committed epoch's files even where merges removed them since; the
next ``setup`` takes them (``restore_shard(..., spares)``) and removes the rest.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from raykv.runtime.specs import RestorePlan, ShardSpec

if TYPE_CHECKING:
    from raykv.runtime.uploader import Uploader

log = logging.getLogger("raykv")


def preload_lazy_imports() -> None:
    """Import what pyarrow imports on its first conversion (pandas, when installed).

    In a fresh shard process that import lands on the first ``process`` call: measured
    on the 2-core machine, a standby's first call after it took a killed shard's role
    took 0.65-0.88 s against 0.1 s later, nearly all of it this import, while the readers
    feeding it waited (backpressure); 0.2 s with the import paid in ``warm``. (A reader
    process imports pandas with ``raykv.sources`` already.) Cost: that import, once per
    process; nothing when pandas is absent or imported already.
    """
    import pyarrow as pa

    pa.array([0])


class LocalRollback:
    """Local recovery of one shard (see the module docstring)."""

    if TYPE_CHECKING:  # what the mixin uses of the shard worker
        spec: ShardSpec
        name: str
        engine: Any
        _quiesced: bool
        _uploader: Uploader

        def __init__(self, spec: ShardSpec) -> None: ...
        def setup(self, plan: RestorePlan) -> dict[str, Any]: ...  # noqa: D102
        def _fence(self, *, check: bool = True) -> None: ...

    @ray.method(concurrency_group="ping")
    def warm(self) -> None:
        """Ready a standby for its ``reset``: do once what a new process's ``setup`` would.

        With the template spec the standby was made with (the attempt's first shard):
        import the checkpointing and engine modules, open the stage's engine in a
        scratch folder and build the operator's logic on it (the logic's lazy imports),
        and open the checkpoint store (its filesystem's imports and connection). All
        of it is thrown away; in a fresh process it is 0.3-0.9 s of the ``reset`` that
        a recovery would otherwise wait for (measured on the 2-core machine). Also what
        pyarrow imports lazily (:func:`preload_lazy_imports`).
        """
        import tempfile

        import raykv.checkpointing
        from raykv.engines import open_engine

        stage = self.spec.stage
        try:
            preload_lazy_imports()
            with tempfile.TemporaryDirectory(prefix="raykv-warm-") as scratch:
                engine = open_engine(stage.engine, Path(scratch) / "e", **stage.engine_params)
                try:
                    stage.operator.build(engine)
                finally:
                    engine.discard()
            if self.spec.checkpoint is not None and not self.spec.driver_io:
                raykv.checkpointing.CheckpointStore(self.spec.checkpoint,
                                                    self.spec.storage_options).close()
        except Exception as err:  # best effort: the reset meets any real problem again
            log.warning("raykv: standby %s could not warm up: %s", self.name, err)

    @ray.method(concurrency_group="ping")
    def quiesce(self) -> None:
        """Local recovery, step 1: stop this attempt's work; keep the process and its files.

        Runs in the ``"ping"`` group, so it is served while the data thread is busy:
        from now on every data call is dropped, the queued uploads of uncommitted epochs
        are abandoned (a running one completes) and waiters of ``wait_uploaded`` fail.
        The driver calls it on every surviving shard before the sink discards the
        output of uncommitted epochs, then :meth:`reset`. Cost: the end of a running upload.
        """
        self._quiesced = True
        self._uploader.abandon(RuntimeError(f"shard {self.name}: rolled back by a recovery"))

    def reset(self, spec: ShardSpec, plan: RestorePlan) -> dict[str, Any]:
        """Local recovery, step 2: become the shard of ``spec`` restored per ``plan``.

        The engine is dropped without a seal (its unsealed writes belong to epochs that
        are replayed), then :meth:`setup` runs as in a new actor: ``restore_shard``
        finds the committed epoch's files in ``data_dir`` and downloads only what is
        missing. Data calls still queued from the old attempt carry its number and are
        dropped (:meth:`_stale`). Cost: a checksum of local files not hashed by this
        process before, the missing downloads and an engine open, not an actor start.
        """
        self._quiesced = True
        self._uploader.abandon(RuntimeError(f"shard {self.name}: rolled back by a recovery"))
        self._fence(check=False)  # the epoch thread of the old attempt has ended
        if self.engine is not None:
            self.engine.discard()
        type(self).__init__(self, spec)  # a fresh attempt: stream, aligner, uploader, counts
        return self.setup(plan)

    @property
    def _links_dir(self) -> Path:
        """Hard links of each sealed epoch's live files, one dir per epoch (``e<epoch>``)."""
        return Path(self.spec.data_dir).parent / f".staging-{self.name}"

    def _prune_links(self, uploaded: int) -> None:
        """Keep the links of the last ``spec.kept_epochs`` uploaded epochs (up to ``uploaded``).

        They hold the files of the committed epoch whatever merges removed since, for a
        rollback in place (:meth:`reset`); a hard link costs no data. Cost: a listdir.
        """
        keep = self.spec.kept_epochs
        done = sorted(d for d in self._links_dir.iterdir() if d.name <= f"e{uploaded:012d}")
        for d in done[:-keep] if keep else done:
            shutil.rmtree(d, ignore_errors=True)


__all__ = ["LocalRollback"]
