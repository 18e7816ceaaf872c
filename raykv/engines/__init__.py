"""State engines: one shard's keyed state in a local directory, behind ``KVStore``.

``open_engine(name, data_dir, **params)`` builds an engine by name (``"lsm"``,
``"hybridlog"``, ``"appendlog"``, ``"memonly"``); the classes can be used directly too.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from raykv.engines.base import KVStore
from raykv.engines.memonly import MemOnly

# name -> "module:Class"; imported lazily so a broken engine does not break the others.
ENGINES: dict[str, str] = {
    "memonly": "raykv.engines.memonly:MemOnly",
    "lsm": "raykv.engines.lsm:LSMTree",
    "hybridlog": "raykv.engines.hybridlog:HybridLog",
    "appendlog": "raykv.engines.appendlog:AppendLog",
}


def engine_class(name: str) -> type[KVStore]:
    """Return the engine class registered under ``name``."""
    try:
        target = ENGINES[name]
    except KeyError:
        msg = f"unknown engine {name!r}; choose one of {sorted(ENGINES)}"
        raise ValueError(msg) from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def open_engine(name: str, data_dir: str | os.PathLike[str], **params: Any) -> KVStore:
    """Open engine ``name`` on ``data_dir`` with its parameters."""
    return engine_class(name)(data_dir, **params)


def __getattr__(attr: str) -> Any:
    for target in ENGINES.values():
        module, cls = target.split(":")
        if cls == attr:
            return getattr(importlib.import_module(module), cls)
    msg = f"module {__name__!r} has no attribute {attr!r}"
    raise AttributeError(msg)


__all__ = ["ENGINES", "KVStore", "MemOnly", "engine_class", "open_engine"]
