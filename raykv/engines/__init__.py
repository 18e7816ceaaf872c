"""State engines: one shard's keyed state in a local directory, behind ``KVStore``.

``open_engine(name, data_dir, **params)`` builds an engine by name (``"lsm"``,
``"hybridlog"``, ``"appendlog"``, ``"memonly"``); the classes can be used directly too.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from raykv.engines.base import KVStore
from raykv.engines.memonly import MemOnly

if TYPE_CHECKING:  # type checkers see the classes ``__getattr__`` imports on first use
    from raykv.engines.appendlog import AppendLog as AppendLog
    from raykv.engines.hybridlog import HybridLog as HybridLog
    from raykv.engines.lsm import LSMTree as LSMTree

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
    found = getattr(importlib.import_module(module), cls)
    if not (isinstance(found, type) and issubclass(found, KVStore)):  # pragma: no cover
        msg = f"{target} is not a KVStore subclass"
        raise TypeError(msg)
    return found


def open_engine(name: str, data_dir: str | os.PathLike[str], **params: Any) -> KVStore:
    """Open engine ``name`` on ``data_dir`` with its parameters."""
    return engine_class(name)(data_dir, **params)


def __getattr__(attr: str) -> type[KVStore]:
    for name, target in ENGINES.items():
        if target.endswith(f":{attr}"):
            return engine_class(name)
    msg = f"module {__name__!r} has no attribute {attr!r}"
    raise AttributeError(msg)


__all__ = ["ENGINES", "KVStore", "MemOnly", "engine_class", "open_engine"]
