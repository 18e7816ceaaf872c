"""Helpers shared by the examples (kept small on purpose: each example reads on its own).

Importing it makes ``raykv`` importable from a source checkout (``python examples/x.py``
without ``pip install``).

* :func:`connect_ray` / :func:`disconnect_ray`: reuse a connected Ray, else start a small
  local one; shut down only one started here.
* :func:`require_checkpoints`: check a checkpoint URL before resuming from it, without
  writing anything (no checkpoints, unknown epoch, corrupt file, unreachable store).
* :func:`guarded`: run an example's body, turning bad input into a message and an exit code.
* :func:`table_diff`: compare a result with a pyarrow model, naming the first difference.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

if importlib.util.find_spec("raykv") is None:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raykv.cli.common import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, run_guarded

__all__ = ["EXIT_CHECK_FAILED", "EXIT_OK", "EXIT_USAGE", "connect_ray", "disconnect_ray",
           "guarded", "kill_and_wait", "require_checkpoints", "table_diff", "verdict"]


def connect_ray(address: str | None = None) -> bool:
    """Connect to Ray: reuse the current connection, else ``address``, else a local Ray.

    Returns True when this call started or connected Ray (the caller shuts it down).
    """
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, configure_logging=False, log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
    return True


def disconnect_ray(started: bool) -> None:
    """Shut Ray down if :func:`connect_ray` started or connected it (``started``)."""
    if started:
        import ray

        ray.shutdown()


def verdict(problem: str | None, exact: str, *, killed: bool = False,
            restarts: int = 0) -> int:
    """Print the example's verdict and return its exit code.

    ``problem`` is the first difference found (``None``: none); with ``killed``, the run
    must also have recovered exactly once. ``exact`` says what matched.
    """
    if problem is None and killed and restarts != 1:
        problem = f"expected one recovery after the kill, got {restarts}"
    if problem is not None:
        print(f"MISMATCH: {problem}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(f"exact: {exact}")
    return EXIT_OK


def kill_and_wait(handle: Any) -> None:
    """``ray.kill`` a shard actor and return once Ray reports it dead.

    Call it from an ``on_progress`` callback on the driver's "barrier" event: the driver
    waits for the callback, so the batches of the next epochs are certain to meet the dead
    actor and the run recovers (a kill that lands after the shard finished all its work
    would leave nothing to recover).
    """
    import contextlib
    import time

    import ray

    ray.kill(handle)
    with contextlib.suppress(ray.exceptions.RayActorError):
        while True:
            ray.get(handle.__ray_ready__.remote(), timeout=10)
            time.sleep(0.01)


def require_checkpoints(url: str, storage_options: dict[str, Any] | None = None,
                        epoch: int | None = None) -> int:
    """Check that ``url`` holds committed epochs (and ``epoch``) and that they are intact.

    Writes nothing: a local path that does not exist is reported before the store
    (which would create it) is opened. Returns the epoch a resume would start from.

    Raises:
        ValueError: no committed checkpoints at ``url``.
        CheckpointNotFoundError: ``epoch`` is not committed (the message lists those that are).
        CorruptionError: a file of that epoch is missing or damaged (names the file).
        StoreUnavailableError: the store cannot be reached or refuses the credentials.
    """
    import fsspec

    from raykv.checkpointing import CheckpointStore

    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if type(fs).__name__ == "LocalFileSystem" and not os.path.isdir(root):
        msg = f"no committed checkpoints at {url}: the folder does not exist; check the URL"
        raise ValueError(msg)
    store = CheckpointStore(url, storage_options)
    epochs = store.epochs()
    if not epochs:
        msg = f"no committed checkpoints at {url}; check the URL (and --endpoint-url for S3)"
        raise ValueError(msg)
    target = epochs[-1] if epoch is None else epoch
    store.read_epoch(target)  # CheckpointNotFoundError lists the committed epochs
    store.verify(target)  # CorruptionError names the bad file
    return target


def guarded(name: str, body: Callable[[], int]) -> int:
    """Run ``body`` with raykv's exit codes for bad input (see ``raykv.cli.common``).

    Exit codes: 0 ok, 1 wrong result or corrupt store, 2 bad input (no checkpoints, unknown
    epoch, a location already in use), 3 the checkpoint store cannot be reached.
    """
    logger = logging.getLogger("raykv")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the examples kill shards: recovery warnings are expected
    try:
        return run_guarded(body)
    except FileExistsError as err:  # e.g. ParquetSink refusing to overwrite a run's output
        print(f"raykv: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    finally:
        logger.setLevel(level)


def table_diff(got: pa.Table | None, want: pa.Table, key: str | list[str],
               rtol: float = 1e-9) -> str | None:
    """Describe the first difference between ``got`` and ``want`` (``None``: equal).

    Rows are matched after sorting by ``key``; float columns compare with relative
    tolerance ``rtol`` (a sum's rounding depends on the order of additions), the others
    exactly. Only ``want``'s columns are compared.
    """
    if got is None:
        return "no output"
    keys = [key] if isinstance(key, str) else list(key)
    missing = [c for c in want.column_names if c not in got.column_names]
    if missing:
        return f"missing column(s) {missing}; got {got.column_names}"
    order = [(k, "ascending") for k in keys]
    got = got.select(want.column_names).sort_by(order)
    want = want.sort_by(order)
    if got.num_rows != want.num_rows:
        return f"{got.num_rows} rows, expected {want.num_rows}"
    for name in want.column_names:
        g, w = got[name], want[name]
        if pa.types.is_floating(w.type):
            close = pc.less_equal(pc.abs(pc.subtract(g, w)),
                                  pc.add(pc.multiply(pc.abs(w), rtol), 1e-12))
            both_null = pc.and_(pc.is_null(g), pc.is_null(w))
            ok = pc.or_kleene(pc.fill_null(close, False), both_null)
            bad = pc.index(ok, False).as_py()
        elif g.equals(w):
            bad = -1
        else:
            pairs = zip(g.to_pylist(), w.to_pylist(), strict=True)
            bad = next(i for i, (a, b) in enumerate(pairs) if a != b)
        if bad >= 0:
            where = ", ".join(f"{k}={got[k][bad].as_py()!r}" for k in keys)
            return f"column {name!r} at {where}: {g[bad].as_py()!r} != {w[bad].as_py()!r}"
    return None
