"""File names inside an engine's data directory: number <-> name.

Every file an engine writes is named ``{number:08d}-{tag}.{kind}``:

* ``number`` grows by one for every file the data directory ever receives and is never
  reused, not even after a merge deletes the file or a crash leaves it half written. It
  orders files by age.
* ``tag`` is 8 hex digits drawn at random each time an engine is opened. It makes a name
  unique across directories and across restores: after a restore to an older epoch the
  numbers restart below numbers already used by later epochs, but the tag differs, so a
  name still identifies one content forever (DESIGN.md invariant 1). The checkpoint
  store relies on this to skip files it already holds.
* ``kind`` says what the file holds (``run``, ``manifest``, ...; see FORMAT.md).

Any other name in the directory (``LOCK``, temporary files) is not an engine file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

_NAME_RE = re.compile(r"^(\d{8,})-([0-9a-f]{8})\.([a-z]+)$")

MANIFEST_KIND = "manifest"
TMP_SUFFIX = ".tmp"


class FileName(NamedTuple):
    """A parsed engine file name."""

    number: int
    tag: str
    kind: str


def file_name(number: int, tag: str, kind: str) -> str:
    """Return the file name for ``number``, ``tag`` and ``kind``."""
    return f"{number:08d}-{tag}.{kind}"


def parse_file_name(name: str) -> FileName | None:
    """Parse an engine file name; return ``None`` for any other name."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return FileName(int(m.group(1)), m.group(2), m.group(3))


def new_tag() -> str:
    """Draw a fresh random 8-hex-digit tag (one per engine open)."""
    return os.urandom(4).hex()


class FileNumbers:
    """Hands out unique file names for one open engine.

    The first number is one past the highest number found in the directory or recorded
    in the manifest, so numbers of deleted files are never handed out again.
    """

    def __init__(self, data_dir: Path, floor: int = 0) -> None:
        self.tag = new_tag()
        highest = floor
        for entry in os.listdir(data_dir):
            parsed = parse_file_name(entry.removesuffix(TMP_SUFFIX))
            if parsed is not None:
                highest = max(highest, parsed.number)
        self.next_number = highest + 1

    def new_name(self, kind: str) -> str:
        """Reserve the next number and return a file name of ``kind`` for it."""
        number = self.next_number
        self.next_number = number + 1
        return file_name(number, self.tag, kind)
