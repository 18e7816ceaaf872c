"""Shard actors of one run attempt: create, connect, check, stop, ask for stats.

Contract: :func:`create_shards` starts one :data:`~raykv.runtime.shard.ShardActor` per
:class:`~raykv.runtime.specs.ShardSpec` (no CPU reservation, placed by
:func:`~raykv.runtime.layout.placements`); :func:`connect_stages` tells each stage's
shards the next stage's; :func:`kill_shards` kills every actor and waits (up to
``KILL_WAIT``) until each is gone, so no old actor holds a data dir when the next
attempt starts; :func:`collect_stats` asks every shard for its counters (best effort).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import ray

from raykv.runtime.committer import KILL_WAIT
from raykv.runtime.layout import placements
from raykv.runtime.shard import ShardActor
from raykv.runtime.specs import ShardSpec
from raykv.topology import Topology

log = logging.getLogger("raykv")


def create_shards(specs: list[list[ShardSpec]], actor_options: dict[str, Any] | None,
                  kept: dict[str, Any] | None = None) -> list[list[Any]]:
    """The actors of ``specs`` (per stage, per shard); ``actor_options`` win.

    A shard named in ``kept`` (a survivor of local recovery) keeps its actor; the others
    are started in their placement slot, so a replacement lands where its predecessor
    was while the nodes are the same (and finds its local files there).
    """
    options: dict[str, Any] = {"num_cpus": 0}
    options.update(actor_options or {})
    kept = kept or {}
    placement = placements(sum(len(row) for row in specs), options)
    out: list[list[Any]] = []
    k = 0
    for row in specs:
        actors = []
        for sp in row:
            old = kept.get(sp.name)
            actors.append(old if old is not None
                          else ShardActor.options(**options, **placement[k]).remote(sp))
            k += 1
        out.append(actors)
    return out


def connect_stages(actors: list[list[Any]], topology: Topology) -> None:
    """Give every shard of each stage the handles of the shards of the stage it feeds."""
    for s, feed in enumerate(topology.stage_feeds):
        if feed is not None:
            for a in actors[s]:
                a.set_downstream.remote(actors[feed.stage])


def check_driver_io_nodes(infos: list[dict[str, Any]], checkpoint: Any) -> None:
    """Driver I/O needs every shard on the driver's node (the store lives in its process).

    Raises:
        ValueError: a shard runs on another node.
    """
    here = ray.get_runtime_context().get_node_id()
    away = [i["shard"] for i in infos if i["node_id"] not in (None, here)]
    if away:
        msg = (
            f"checkpoint {checkpoint!r} is a memory:// store, which lives in the "
            f"driver's process, but shards {away} run on other nodes; use a file:// "
            "path on shared storage or s3:// for a multi-node cluster"
        )
        raise ValueError(msg)


def kill_shards(actors: list[Any]) -> None:
    """Kill every actor and wait until they are gone (``KILL_WAIT`` in all at most)."""
    for a in actors:
        with contextlib.suppress(Exception):
            ray.kill(a, no_restart=True)
    deadline = time.monotonic() + KILL_WAIT
    for a in actors:
        while time.monotonic() < deadline:
            try:
                ray.get(a.ping.remote(), timeout=1.0)
            except ray.exceptions.GetTimeoutError:
                continue
            except Exception:
                break
            time.sleep(0.05)


def collect_stats(handles: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every actor's ``stats()`` by name (``{}`` if any call fails)."""
    names = list(handles)
    try:
        stats = ray.get([handles[n].stats.remote() for n in names], timeout=30)
    except Exception as err:
        log.warning("raykv: could not collect shard stats: %s", err)
        return {}
    return dict(zip(names, stats, strict=True))


__all__ = ["check_driver_io_nodes", "collect_stats", "connect_stages", "create_shards",
           "kill_shards"]
