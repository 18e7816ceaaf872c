"""Object layout of a checkpoint store: key names and format constants (see FORMAT.md).

Every reader and writer of the store takes its key names and version numbers from here;
FORMAT.md and these constants change in the same commit. DO NOT CHANGE the layout or the
meaning of a field in place: bump ``STORE_FORMAT`` and keep a reader for the old one.

Keys are relative to the store root (the URL's path) and always use ``/``::

    files/<shard>/<file name>            immutable engine file, uploaded once
    shards/<shard>/<epoch:012d>.json     shard manifest (written before the commit)
    epochs/<epoch:012d>.json             epoch manifest: THE commit, written last
    pins/<epoch:012d>                    retention pin (empty object)
"""

from __future__ import annotations

import re

from raykv.engines.filename import parse_file_name

STORE_FORMAT = 1
"""Version of the manifest JSON schemas; readers reject newer versions."""

CHECKSUM_ALGO = "crc32"
"""Checksum of uploaded files: zlib crc32 of the whole file, written ``crc32:xxxxxxxx``."""

FILES_DIR = "files"
SHARDS_DIR = "shards"
EPOCHS_DIR = "epochs"
PINS_DIR = "pins"

EPOCH_DIGITS = 12
MAX_EPOCH = 10**EPOCH_DIGITS - 1
MANIFEST_SUFFIX = ".json"
MAX_SHARD_LEN = 200

_EPOCH_LEAF_RE = re.compile(r"^(\d{12})\.json$")
_PIN_LEAF_RE = re.compile(r"^(\d{12})$")
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


def epoch_leaf(epoch: int) -> str:
    """File name of an epoch's manifest (also of a shard manifest): ``000000000042.json``."""
    return f"{epoch:0{EPOCH_DIGITS}d}{MANIFEST_SUFFIX}"


def epoch_key(epoch: int) -> str:
    """Key of the epoch manifest of ``epoch``."""
    return f"{EPOCHS_DIR}/{epoch_leaf(epoch)}"


def shard_manifest_key(shard: str, epoch: int) -> str:
    """Key of the manifest of ``shard`` for ``epoch``."""
    return f"{SHARDS_DIR}/{shard}/{epoch_leaf(epoch)}"


def file_key(shard: str, name: str) -> str:
    """Key of engine file ``name`` of ``shard``."""
    return f"{FILES_DIR}/{shard}/{name}"


def pin_key(epoch: int) -> str:
    """Key of the pin of ``epoch``."""
    return f"{PINS_DIR}/{epoch:0{EPOCH_DIGITS}d}"


def parse_epoch_leaf(leaf: str) -> int | None:
    """Epoch number of a manifest leaf name, or ``None`` for any other name."""
    m = _EPOCH_LEAF_RE.match(leaf)
    return int(m.group(1)) if m else None


def parse_pin_leaf(leaf: str) -> int | None:
    """Epoch number of a pin leaf name, or ``None`` for any other name."""
    m = _PIN_LEAF_RE.match(leaf)
    return int(m.group(1)) if m else None


def parse_file_key(key: str) -> tuple[str, str] | None:
    """Split ``files/<shard>/<name>`` into ``(shard, name)``; ``None`` if it is not one."""
    head, _, name = key.rpartition("/")
    if not head.startswith(FILES_DIR + "/") or parse_file_name(name) is None:
        return None
    return head[len(FILES_DIR) + 1 :], name


def parse_shard_manifest_key(key: str) -> tuple[str, int] | None:
    """Split ``shards/<shard>/<epoch>.json`` into ``(shard, epoch)``; ``None`` otherwise."""
    head, _, leaf = key.rpartition("/")
    epoch = parse_epoch_leaf(leaf)
    if not head.startswith(SHARDS_DIR + "/") or epoch is None:
        return None
    return head[len(SHARDS_DIR) + 1 :], epoch


def check_epoch(epoch: object) -> int:
    """Return ``epoch`` if it is an int in ``0..MAX_EPOCH``; raise otherwise."""
    if type(epoch) is not int:
        msg = f"epoch must be an int, got {type(epoch).__name__}"
        raise TypeError(msg)
    if not 0 <= epoch <= MAX_EPOCH:
        msg = f"epoch={epoch} is out of range; allowed 0..{MAX_EPOCH}"
        raise ValueError(msg)
    return epoch


def check_shard(shard: object) -> str:
    """Return ``shard`` if it is a valid shard name; raise ``ValueError`` naming the rule.

    A shard name is 1..200 characters of ``[A-Za-z0-9_.-]`` in ``/``-separated components
    (``"agg/0003"``). No component may be empty, start with ``.``, end in ``.json`` or look
    like an engine file name: each of those would be ambiguous with the keys above.
    """
    if not isinstance(shard, str):
        msg = f"shard must be a str such as 'agg/0003', got {type(shard).__name__}"
        raise TypeError(msg)
    ok = 0 < len(shard) <= MAX_SHARD_LEN and all(
        _COMPONENT_RE.match(c) and not c.endswith(MANIFEST_SUFFIX) and parse_file_name(c) is None
        for c in shard.split("/")
    )
    if not ok:
        msg = (
            f"invalid shard name {shard!r}: use 1..{MAX_SHARD_LEN} characters of "
            "[A-Za-z0-9_.-] in '/'-separated components (e.g. 'agg/0003'); a component "
            "must not be empty, start with '.', end in '.json' or look like an engine file name"
        )
        raise ValueError(msg)
    return shard


def check_file_name(name: object) -> str:
    """Return ``name`` if it is an engine file name (``NNNNNNNN-tag.kind``); raise otherwise."""
    if not isinstance(name, str) or parse_file_name(name) is None:
        msg = (
            f"{name!r} is not an engine file name (NNNNNNNN-tttttttt.kind, see "
            "raykv/engines/filename.py); only uniquely named engine files can be checkpointed"
        )
        raise ValueError(msg)
    return name
