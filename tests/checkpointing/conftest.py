"""Fixtures of the checkpoint-store tests: one store URL per backend, fake engine dirs."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pytest

from raykv.checkpointing import CheckpointStore
from raykv.engines.filename import file_name, new_tag


@dataclass
class Backend:
    """A store location: URL, storage options, and raw access that bypasses the store."""

    name: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def store(self, **kw: Any) -> CheckpointStore:
        return CheckpointStore(self.url, self.options or None, **kw)

    def raw(self) -> tuple[Any, str]:
        fs, root = fsspec.core.url_to_fs(self.url, **self.options)
        return fs, root.rstrip("/")

    def read(self, key: str) -> bytes:
        fs, root = self.raw()
        return bytes(fs.cat_file(f"{root}/{key}"))

    def write(self, key: str, data: bytes) -> None:
        fs, root = self.raw()
        fs.pipe_file(f"{root}/{key}", data)

    def remove(self, key: str) -> None:
        fs, root = self.raw()
        fs.rm_file(f"{root}/{key}")

    def objects(self, prefix: str = "") -> dict[str, int]:
        """Every object under ``prefix`` (relative keys) with its size."""
        fs, root = self.raw()
        base = f"{root}/{prefix}".rstrip("/")
        try:
            found = fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for name, info in found.items():
            rel = name[name.index(root) + len(root) + 1 :] if root in name else name
            if info.get("type", "file") == "file":
                out[rel] = int(info["size"])
        return out


@pytest.fixture(params=["file", "memory", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The same tests on a local directory, fsspec memory:// and the moto S3 server."""
    if request.param == "file":
        yield Backend("file", f"file://{tmp_path}/store")
    elif request.param == "memory":
        name = f"raykv-test-{uuid.uuid4().hex}"
        yield Backend("memory", f"memory://{name}")
        fs = fsspec.filesystem("memory")
        if fs.exists(f"/{name}"):
            fs.rm(f"/{name}", recursive=True)
    else:
        bucket, options = request.getfixturevalue("s3_bucket")
        yield Backend("s3", f"{bucket}/ckpt", dict(options))


class FakeEngine:
    """Writes engine-named immutable files into a directory, like an engine's seal would.

    ``live`` is the current live set; ``step(add, drop)`` writes ``add`` new files and
    drops ``drop`` old ones (a merge), returning the new live list.
    """

    def __init__(self, data_dir: Path, seed: int = 0) -> None:
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.tag = new_tag()
        self.number = 0
        self.live: list[str] = []

    def new_file(self, kind: str = "run", size: int | None = None) -> str:
        self.number += 1
        name = file_name(self.number, self.tag, kind)
        n = size if size is not None else self.rng.randrange(10, 3000)
        (self.dir / name).write_bytes(self.rng.randbytes(n))
        return name

    def step(self, add: int = 1, drop: int = 0) -> list[str]:
        for name in self.live[:drop]:
            os.unlink(self.dir / name)
        self.live = self.live[drop:] + [self.new_file() for _ in range(add)]
        return list(self.live)


@pytest.fixture
def fake_engine(tmp_path: Path) -> FakeEngine:
    return FakeEngine(tmp_path / "engine")
