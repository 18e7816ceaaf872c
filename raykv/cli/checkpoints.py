"""``raykv checkpoints ...``: list, show, verify, gc, export and restore checkpoints."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING

from raykv.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    add_store_options,
    fail,
    human_bytes,
    run_guarded,
    storage_options,
)

if TYPE_CHECKING:
    from raykv.checkpointing import CheckpointStore, EpochManifest
    from raykv.runtime.metadata import ShardLoad


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``checkpoints`` and its subcommands on ``sub``."""
    ckpt = sub.add_parser("checkpoints", help="inspect, verify, gc, export and restore checkpoints",
                          description="Work with a checkpoint store (file://, s3://, plain path).")
    cmds = ckpt.add_subparsers(dest="ckpt_command", required=True)

    def cmd(name: str, help_: str, epoch: str = "none") -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help_, description=help_)
        p.add_argument("url", help="checkpoint store URL, e.g. file:///tmp/ckpt or s3://bucket/prefix")
        if epoch == "required":
            p.add_argument("epoch", type=int, help="committed epoch")
        elif epoch == "optional":
            p.add_argument("epoch", type=int, nargs="?", default=None,
                           help="committed epoch (default: all)")
        add_store_options(p)
        return p

    cmd("list", "list committed epochs: time, shards, size, new bytes")
    p = cmd("show", "show one epoch: offsets, partitioning, per-shard files", "required")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    cmd("verify", "check every referenced file is present and intact (checksums)", "optional")
    p = cmd("gc", "delete expired epochs (dry run unless --yes)")
    p.add_argument("--retain", type=int, required=True, help="newest epochs to keep (>= 1)")
    p.add_argument("--yes", action="store_true", help="really delete (default: dry run)")
    p.add_argument("--orphans-older-than", type=float, default=None, metavar="SECONDS",
                   help="also sweep files no epoch references, older than SECONDS")
    p = cmd("export", "write a stage's state at an epoch as Parquet", "required")
    p.add_argument("--stage", required=True, help="stage name or index")
    p.add_argument("--out", required=True, help="output directory")
    p = cmd("restore-local", "restore one shard of an epoch into a local directory", "required")
    p.add_argument("--shard", required=True, help="shard name or index (see `show`)")
    p.add_argument("dir", help="local directory (must not be open by an engine)")


def run(args: argparse.Namespace) -> int:
    """Dispatch a ``checkpoints`` subcommand; return the exit code."""
    return run_guarded(lambda: _COMMANDS[args.ckpt_command](args))


def _open(args: argparse.Namespace) -> CheckpointStore:
    from raykv.checkpointing import CheckpointStore

    return CheckpointStore(args.url, storage_options(args))


def _require_epochs(store: CheckpointStore, url: str) -> list[int]:
    epochs = store.epochs()
    if not epochs:
        msg = f"no committed checkpoints at {url}; check the URL (and --endpoint-url for S3)"
        raise ValueError(msg)
    return epochs


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_list(args: argparse.Namespace) -> int:
    """List committed epochs with time, shard count, size and new bytes."""
    store = _open(args)
    epochs = _require_epochs(store, args.url)
    from raykv.runtime.metadata import read_metadata

    pins = set(store.pins())
    print(f"{'epoch':>8}  {'committed (UTC)':<19}  {'shards':>6}  {'size':>10}  {'new':>10}  note")
    for e in epochs:
        em = store.read_epoch(e)
        note = []
        if e in pins:
            note.append("pinned")
        meta = read_metadata(em.metadata)
        if meta is not None and meta.final:
            note.append("final")
        print(f"{e:>8}  {_when(em.created_at):<19}  {len(em.shards):>6}  "
              f"{human_bytes(em.total_bytes):>10}  {human_bytes(em.new_bytes):>10}  "
              f"{' '.join(note)}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    """Print one epoch manifest: offsets, stages and per-shard files."""
    store = _open(args)
    _require_epochs(store, args.url)
    em = store.read_epoch(args.epoch)
    if args.json:
        print(json.dumps(em.to_dict(), indent=2, sort_keys=True))
        return EXIT_OK
    print(f"epoch {em.epoch}, committed {_when(em.created_at)} UTC, "
          f"{len(em.shards)} shard(s), {human_bytes(em.total_bytes)} "
          f"({human_bytes(em.new_bytes)} new)")
    print(f"offsets: {json.dumps(em.offsets, sort_keys=True)}")
    from raykv.runtime.metadata import read_metadata

    meta = read_metadata(em.metadata)
    stages = meta.stages if meta is not None else ()
    load = (meta.load if meta is not None else None) or {}
    for i, stage in enumerate(stages):
        moved = len((stage.partitioning or {}).get("moved", []))
        print(f"stage {i} {stage.name!r}: {stage.operator} key={stage.key!r} "
              f"engine={stage.engine} shards={stage.num_shards}, "
              f"{moved} key groups moved by rebalancing")
        for line in _load_lines(load.get(stage.name, {})):
            print(line)
    for name, sm in sorted(em.shards.items()):
        print(f"  shard {name}: {len(sm.files)} file(s), {human_bytes(sm.total_bytes)}, "
              f"{sm.new_files} new ({human_bytes(sm.new_bytes)})")
        for f in sm.files:
            print(f"    {f.name:<32} {f.size:>12,}  {f.checksum}")
    return EXIT_OK


def _load_lines(shards: dict[str, ShardLoad]) -> list[str]:
    """Per-shard load of one stage in an epoch manifest (written with ``hot_keys > 0``)."""
    from raykv.hotkeys import format_hot_keys

    total = sum(v.updates_total for v in shards.values())
    lines = []
    for name, v in sorted(shards.items()):
        share = v.updates_total / total if total else 0.0
        lines.append(f"  load {name}: {v.updates:,} updates this epoch, {v.updates_total:,} "
                     f"in the run ({share:.0%}), write amp {v.write_amplification:.2f}, "
                     f"hot keys: {format_hot_keys(v.hot_keys)}")
    return lines


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every referenced file of one or all epochs (size and checksum).

    On damage the error names the first bad file and which committed epochs are intact
    (what ``Pipeline.run`` says when a restore meets it).
    """
    from raykv.errors import CorruptionError

    store = _open(args)
    epochs = _require_epochs(store, args.url)
    try:
        store.verify(args.epoch)
    except CorruptionError as err:
        err.set_restorable(epochs, store.intact_epochs(epochs), store=args.url,
                           epoch=args.epoch)
        raise
    which = f"epoch {args.epoch}" if args.epoch is not None else f"{len(epochs)} epoch(s)"
    print(f"ok: every file of {which} at {args.url} is present and matches its checksum")
    return EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    """Expire epochs beyond ``--retain`` (dry run unless ``--yes``)."""
    if args.retain < 1:
        return fail(EXIT_USAGE, f"--retain must be >= 1, got {args.retain}")
    store = _open(args)
    _require_epochs(store, args.url)
    report = store.gc(args.retain, dry_run=not args.yes)
    verb = "deleted" if args.yes else "would delete"
    print(f"retained epochs: {report.retained} (pinned: {report.pinned})")
    print(f"{verb}: {len(report.expired)} epoch(s) {report.expired}, "
          f"{len(report.deleted_files)} file(s), {human_bytes(report.deleted_bytes)}")
    for key in report.deleted_files[:50]:
        print(f"  {key}")
    if len(report.deleted_files) > 50:
        print(f"  ... and {len(report.deleted_files) - 50} more")
    if args.orphans_older_than is not None:
        doomed = store.sweep_orphans(args.orphans_older_than, dry_run=not args.yes)
        print(f"{verb}: {len(doomed)} orphan file(s) older than {args.orphans_older_than:g} s")
    if not args.yes:
        print("dry run: nothing was deleted; pass --yes to delete")
    return EXIT_OK


def _shard_name(em: EpochManifest, shard: str) -> str:
    names = sorted(em.shards)
    if shard in em.shards:
        return shard
    if shard.isdigit() and int(shard) < len(names):
        return names[int(shard)]
    msg = f"epoch {em.epoch} has no shard {shard!r}; its shards: {', '.join(names)}"
    raise ValueError(msg)


def cmd_restore_local(args: argparse.Namespace) -> int:
    """Restore one shard of an epoch into a local directory."""
    store = _open(args)
    _require_epochs(store, args.url)
    em = store.read_epoch(args.epoch)
    shard = _shard_name(em, args.shard)
    result = store.restore_shard(args.epoch, shard, Path(args.dir))
    print(f"restored shard {shard} of epoch {args.epoch} into {args.dir}: "
          f"{result.downloaded_files} file(s) downloaded ({human_bytes(result.downloaded_bytes)}), "
          f"{result.reused_files + result.linked_files} already there")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Write the state of one stage at an epoch as Parquet."""
    from raykv.tools.export import export_stage

    store = _open(args)
    _require_epochs(store, args.url)
    written = export_stage(store, args.epoch, args.stage, Path(args.out))
    print(f"wrote {written.rows:,} row(s) of stage {written.stage!r} at epoch {args.epoch} "
          f"to {written.path}")
    return EXIT_OK


_COMMANDS = {
    "list": cmd_list,
    "show": cmd_show,
    "verify": cmd_verify,
    "gc": cmd_gc,
    "export": cmd_export,
    "restore-local": cmd_restore_local,
}
