"""The plug-in point for ``remote=``: what an engine needs from a checkpoint backend.

Engines do not know how checkpoints are stored. An engine opened with ``remote=url``
asks the registered ``RemoteFactory`` for an ``EngineRemote`` and delegates
``snapshot(epoch)`` / ``restore(epoch)`` to it. The backend drives the engine only
through its public API: ``seal()``, ``data_dir``, ``engine_name`` and
``swapped_out()`` (see ``KVStore.swapped_out`` for what it may do to the directory).

The checkpointing layer (``raykv.checkpointing.engine_remote``) is the default backend.
It is named here, not imported: it is loaded by name the first time an engine is opened
with ``remote=`` and no other factory was registered (``register_remote_factory``), like
``raykv.engines.ENGINES`` names engine classes. Nothing in ``raykv.engines`` imports
``raykv.checkpointing`` (``tests/engines/test_layering.py`` checks it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from raykv.engines.base import KVStore

#: "module:callable" of the factory used when none is registered
DEFAULT_REMOTE_FACTORY = "raykv.checkpointing.engine_remote:EngineRemote"


class EngineRemote(Protocol):
    """A checkpoint backend bound to one engine (built by a ``RemoteFactory``)."""

    def snapshot(self, epoch: int) -> list[str]:
        """Seal the engine, store its live files as ``epoch``; return their names."""
        ...

    def restore(self, epoch: int | None = None) -> int:
        """Replace the engine's state with ``epoch`` (latest when ``None``); return it.

        Must go through ``engine.swapped_out()``: fetch and verify first, then swap files.
        """
        ...

    def restore_into_empty_dir(self) -> None:
        """Fill the engine's empty, not yet loaded ``data_dir`` with the latest epoch.

        Called by ``KVStore.__init__`` (directory locked, no manifest in it yet); does
        nothing when the backend holds no epoch.
        """
        ...

    def close(self) -> None:
        """Release the backend's resources (called by ``KVStore.close``; idempotent)."""
        ...


class RemoteFactory(Protocol):
    """Builds the ``EngineRemote`` of ``engine`` for ``url`` (called before the engine loads)."""

    def __call__(self, engine: KVStore, url: str,
                 storage_options: dict[str, Any] | None) -> EngineRemote:
        """Return the remote bound to ``engine`` (not loaded yet: keep it, do not use it)."""
        ...


_factory: RemoteFactory | None = None


def register_remote_factory(factory: RemoteFactory | None) -> None:
    """Use ``factory`` for engines opened with ``remote=`` from now on (``None``: default)."""
    global _factory  # one process-wide plug-in slot
    _factory = factory


def remote_factory() -> RemoteFactory:
    """The registered factory, else the default one (``DEFAULT_REMOTE_FACTORY``, loaded once)."""
    global _factory  # cached on first use
    if _factory is None:
        module, name = DEFAULT_REMOTE_FACTORY.split(":")
        found: RemoteFactory = getattr(importlib.import_module(module), name)
        _factory = found
    return _factory
