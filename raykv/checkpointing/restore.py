"""Swap a downloaded shard state into a local data directory, crash-safely.

An engine opens the engine manifest with the highest number in its directory and
deletes every engine file that manifest does not list (``KVStore._load``). The swap keeps
this true at every instant: *the highest-numbered manifest in the directory is a complete
state*, either the old one or the restored one. Steps (docs/recovery.md, "Restore"):

1. Remove leftovers of an earlier crashed restore (``.raykv-restore-*`` directories).
2. Reuse every listed file already present locally with the right size and checksum;
   hard-link the missing ones found intact in a ``spares`` directory (a shard's links
   of the epochs it uploaded) into a staging directory inside ``data_dir``; download
   the rest there and verify each.
3. Move the staged run files into place; fsync the directory.
4. Delete stale engine manifests other than the one in force (garbage: its own previous
   commits; the engine would delete them at open).
5. Move the restored engine manifest into place; fsync. (The old state may still win
   if its manifest has a higher number; both are complete.)
6. Delete every other engine manifest; fsync. Now only the restored state can be loaded.
7. Delete every engine file the restored manifest does not list, and the staging dir.

Files other than engine files (``LOCK``, anything the caller keeps) are never touched.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from raykv.checkpointing.checksums import file_checksum
from raykv.checkpointing.manifests import FileEntry
from raykv.engines.fileio import fsync_dir
from raykv.engines.filename import MANIFEST_KIND, TMP_SUFFIX, parse_file_name

STAGING_PREFIX = ".raykv-restore-"

Fetch = Callable[[Sequence[FileEntry], Path], None]
"""Download the given entries into the directory, verified and fsynced; raise on any failure."""


@dataclass(frozen=True)
class SwapResult:
    """What a restore did locally: files reused from ``data_dir`` and files downloaded."""

    reused_files: int
    downloaded_files: int
    downloaded_bytes: int
    linked_files: int = 0


def _manifests(data_dir: Path) -> list[tuple[int, str]]:
    out = []
    for entry in os.listdir(data_dir):
        parsed = parse_file_name(entry)
        if parsed is not None and parsed.kind == MANIFEST_KIND:
            out.append((parsed.number, entry))
    return sorted(out)


def _is_intact(path: Path, entry: FileEntry) -> bool:
    try:
        size, checksum = file_checksum(path)
    except (FileNotFoundError, IsADirectoryError):
        return False
    return size == entry.size and checksum == entry.checksum


def swap_in(
    data_dir: str | os.PathLike[str], entries: Sequence[FileEntry], fetch: Fetch,
    spares: Sequence[Path] = (),
) -> SwapResult:
    """Make ``data_dir`` hold exactly the engine files ``entries`` (at most one a manifest).

    ``spares``: directories on the same filesystem that may hold some of the files under
    their names (verified like local files, then hard-linked instead of downloaded).

    The old local state is dropped only after every new file is present and verified; a
    crash at any step leaves a directory that opens as either the old or the new state.

    Cost: one checksum pass over local and spare files not hashed before in this
    process, the downloads of files found nowhere locally, a few directory fsyncs.

    Raises:
        ValueError: ``entries`` holds more than one engine manifest (none means an
            engine that never sealed: the directory ends up with no engine files).
        CorruptionError: from ``fetch``; the local directory is unchanged then.
    """
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    manifests = [e for e in entries if (p := parse_file_name(e.name)) and p.kind == MANIFEST_KIND]
    if len(manifests) > 1:
        msg = f"a shard state lists at most one engine manifest, found {len(manifests)}"
        raise ValueError(msg)
    manifest = manifests[0] if manifests else None  # None: an empty engine (no seal yet)

    # 1. leftovers of a crashed restore
    for entry in os.listdir(data):
        if entry.startswith(STAGING_PREFIX):
            shutil.rmtree(data / entry, ignore_errors=True)

    # 2. reuse what is intact locally, fetch the rest into staging
    missing = [e for e in entries if not _is_intact(data / e.name, e)]
    staging = data / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        linked = _link_spares(missing, spares, staging)
        fetched = [e for e in missing if e.name not in linked]
        if fetched:
            fetch(fetched, staging)

        # 3. run files into place
        for e in missing:
            if manifest is None or e.name != manifest.name:
                os.replace(staging / e.name, data / e.name)
        fsync_dir(data)

        # 4. stale manifests (all but the one in force and the restored one)
        current = _manifests(data)
        keep = manifest.name if manifest is not None else None
        for _, name in current[:-1]:
            if name != keep:
                os.unlink(data / name)

        # 5. the restored manifest (one fsync covers steps 4 and 5)
        if manifest is not None and manifest in missing:
            os.replace(staging / manifest.name, data / manifest.name)
        fsync_dir(data)

        # 6. drop every other manifest: the restored state is now the only one
        for _, name in _manifests(data):
            if name != keep:
                os.unlink(data / name)
        fsync_dir(data)

        # 7. stale engine files
        live = {e.name for e in entries}
        for entry in os.listdir(data):
            parsed = parse_file_name(entry.removesuffix(TMP_SUFFIX))
            if parsed is not None and entry not in live:
                os.unlink(data / entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # no fsync for step 7: stale files that reappear after a crash are deleted at open
    return SwapResult(
        reused_files=len(entries) - len(missing),
        downloaded_files=len(fetched),
        downloaded_bytes=sum(e.size for e in fetched),
        linked_files=len(linked),
    )


def _link_spares(wanted: Sequence[FileEntry], spares: Sequence[Path], staging: Path
                 ) -> set[str]:
    """Hard-link each wanted file found intact in a spare dir into ``staging``; the names."""
    linked: set[str] = set()
    for e in wanted:
        for d in spares:
            src = d / e.name
            if _is_intact(src, e):
                try:
                    os.link(src, staging / e.name)
                except OSError:  # another filesystem, or gone meanwhile: download it
                    continue
                linked.add(e.name)
                break
    return linked
