"""Lazy package exports (PEP 562): a package names its public objects, each module loads on use.

Why: a shard or reader process imports only the operator and source modules its run
uses. Importing every operator and source up front (about 40 modules) cost a shard
process 0.45-0.56 CPU-s for raykv's imports and pandas (which pyarrow imports on its
first conversion) against 0.36-0.46 s now (five fresh interpreters each, alternated,
the 2-core VM), paid again by every replacement and standby a failure starts.

Contract: :func:`exports` returns the package's ``__getattr__`` and ``__dir__`` (``raykv``,
``raykv.operators`` and ``raykv.sources`` use it). The
first access of a name imports its module and caches the object on the package, so
later accesses are plain attribute reads; ``from package import Name`` and ``import *``
(through ``__all__``) work as with eager imports. A package keeps its names under
``if TYPE_CHECKING:`` imports too, for type checkers.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def exports(package: str, modules: Mapping[str, tuple[str, ...]],
            submodules: Iterable[str] = ()
            ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` of ``package`` for ``{module: (name, ...)}``.

    ``modules`` maps a module's full name to the names the package takes from it;
    ``submodules``: the package's own submodules, imported as attributes on first use.
    Cost: one dict lookup and an import on a name's first access; nothing after.
    """
    where = {name: module for module, names in modules.items() for name in names}
    where.update({name: f"{package}.{name}" for name in submodules})
    subs = frozenset(submodules)
    pkg = sys.modules[package]

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            msg = f"module {package!r} has no attribute {name!r}"
            raise AttributeError(msg)
        loaded = importlib.import_module(module)
        value = loaded if name in subs else getattr(loaded, name)
        setattr(pkg, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(pkg), *where})

    return __getattr__, __dir__


__all__ = ["exports"]
