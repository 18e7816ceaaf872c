"""Copying state by key group: what rescaling and rebalancing do to a shard's engine.

Contract: pure functions over engines (``raykv.engines.KVStore``), no Ray, no store.

* :func:`copy_from` writes into ``engine`` the pairs of old shards (``RestoreSource``)
  whose key group is wanted; each source is fetched into a local dir by the caller's
  ``fetch`` (a restore from the store, or a dir the driver restored already), opened,
  scanned once and deleted. Metadata keys (``routing_key(k) is None``) belong to every
  shard: their values are merged by the operator (``merge_metadata``).
* :func:`drop_unowned` deletes the pairs whose key group the shard no longer owns.

A rescale (a new shard count or engine) rebuilds each new shard with ``copy_from``; a
rebalance copies only the gained groups and then drops the lost ones.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raykv.partitioning import Partitioning, key_groups_of
from raykv.runtime.specs import RestoreSource

REBUILD_CHUNK = 65_536


def routing_key_fn(operator: Any) -> Any:
    """Return ``f(state_key) -> key bytes | None``: the encoded key that was hashed.

    Uses the operator's ``routing_key(state_key)`` (``KeyedOperator`` has one: windows
    strip their 8-byte suffix; metadata keys give ``None``, meaning "every shard keeps a
    copy"). An operator without one has state keys equal to its encoded keys.
    """
    fn = getattr(operator, "routing_key", None)
    if callable(fn):
        return fn
    return lambda k: k


def route_groups(keys: list[bytes], route: Any, num_key_groups: int) -> tuple[list[Any], Any]:
    """The routing key (``None``: metadata) and the key group of each state key."""
    routed = [route(k) for k in keys]
    return routed, key_groups_of([b"" if r is None else r for r in routed], num_key_groups)


def copy_from(
    engine: Any, operator: Any, sources: tuple[RestoreSource, ...], wanted: Any, *,
    num_key_groups: int, fetch: Callable[[RestoreSource], Path],
) -> int:
    """Copy the pairs of ``sources`` whose key group ``g`` has ``wanted[g]`` into ``engine``.

    ``fetch(src)`` returns a local dir holding ``src``'s state (deleted after the scan).
    Metadata keys of the sources and of ``engine`` are merged by ``operator``. Returns
    the number of pairs written.
    """
    from raykv.engines import open_engine

    route = routing_key_fn(operator)
    copied = 0
    meta: dict[bytes, list[bytes]] = {}  # metadata key -> its value in each old shard
    for src in sources:
        tmp = fetch(src)
        old = open_engine(src.engine, tmp, **src.engine_params)
        try:
            keys: list[bytes] = []
            values: list[bytes] = []
            for k, v in old.items():
                keys.append(k)
                values.append(v)
                if len(keys) >= REBUILD_CHUNK:
                    copied += copy_owned(engine, keys, values, route, wanted, num_key_groups,
                                         meta)
                    keys, values = [], []
            copied += copy_owned(engine, keys, values, route, wanted, num_key_groups, meta)
        finally:
            old.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if meta:
        pairs = []
        for k, vs in meta.items():
            own = engine.get(k)
            pairs.append((k, operator.merge_metadata(k, [own, *vs] if own else vs)))
        engine.multi_set(pairs)
        copied += len(pairs)
    return copied


def copy_owned(
    engine: Any, keys: list[bytes], values: list[bytes], route: Any, wanted: Any,
    num_key_groups: int, meta: dict[bytes, list[bytes]],
) -> int:
    """``multi_set`` the pairs whose key group is ``wanted``; collect metadata keys in ``meta``."""
    if not keys:
        return 0
    routed, g = route_groups(keys, route, num_key_groups)
    keep = wanted[g].tolist()
    pairs = []
    for k, v, ok, r in zip(keys, values, keep, routed, strict=True):
        if r is None:
            meta.setdefault(k, []).append(v)
        elif ok:
            pairs.append((k, v))
    if pairs:
        engine.multi_set(pairs)
    return len(pairs)


def drop_unowned(engine: Any, operator: Any, partitioning: Partitioning, index: int) -> int:
    """Delete the pairs of shard ``index`` whose key group it does not own. Returns how many."""
    owned = partitioning.owned_mask(index)
    route = routing_key_fn(operator)
    doomed: list[bytes] = []
    chunk: list[bytes] = []

    def flush() -> None:
        routed, g = route_groups(chunk, route, partitioning.num_key_groups)
        doomed.extend(k for k, r, ok in zip(chunk, routed, owned[g].tolist(), strict=True)
                      if r is not None and not ok)
        chunk.clear()

    for k in engine.keys():  # noqa: SIM118 - an engine, not a dict
        chunk.append(k)
        if len(chunk) >= REBUILD_CHUNK:
            flush()
    flush()
    for k in doomed:
        engine.delete(k)
    return len(doomed)


__all__ = ["REBUILD_CHUNK", "copy_from", "copy_owned", "drop_unowned", "routing_key_fn"]
