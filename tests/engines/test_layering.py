"""Layering: the engines know nothing of the checkpointing layer (it plugs into them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import raykv.engines

ENGINES_DIR = Path(raykv.engines.__file__).parent
FORBIDDEN = "raykv.checkpointing"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    package = "raykv." + ".".join(path.relative_to(ENGINES_DIR.parent).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


def test_no_engine_module_imports_checkpointing() -> None:
    modules = sorted(ENGINES_DIR.rglob("*.py"))
    assert len(modules) > 15  # the walk found the engines package
    bad = [
        f"{path.relative_to(ENGINES_DIR.parent.parent)}:{line} imports {name}"
        for path in modules
        for line, name in _imports(path)
        if name == FORBIDDEN or name.startswith(FORBIDDEN + ".")
    ]
    assert not bad, "raykv.engines must not import raykv.checkpointing:\n" + "\n".join(bad)


def test_using_engines_does_not_load_checkpointing(tmp_path: Path) -> None:
    """Importing every engine module and running every engine leaves checkpointing unloaded."""
    code = f"""
import importlib, pkgutil, sys
import raykv.engines as e
for m in pkgutil.walk_packages(e.__path__, "raykv.engines."):
    importlib.import_module(m.name)
for name in e.ENGINES:
    with e.open_engine(name, {str(tmp_path)!r} + "/" + name) as kv:
        kv.set(b"k", b"v"); kv.seal(); kv.live_keys()
loaded = sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_remote_backend_is_plugged_in(tmp_path: Path) -> None:
    """``remote=`` goes through the registered factory; engines only see the protocol."""
    from raykv.engines import MemOnly
    from raykv.engines.remote import register_remote_factory

    calls: list[str] = []

    class Fake:
        def __init__(self, engine: MemOnly, url: str, options: object) -> None:
            self.engine = engine
            calls.append(url)

        def snapshot(self, epoch: int) -> list[str]:
            return self.engine.seal()

        def restore(self, epoch: int | None = None) -> int:
            with self.engine.swapped_out():
                pass
            return epoch or 0

        def restore_into_empty_dir(self) -> None:
            calls.append("empty")

        def close(self) -> None:
            calls.append("close")

    register_remote_factory(Fake)
    try:
        with MemOnly(tmp_path, remote="fake://x") as kv:
            kv.set(b"a", b"1")
            files = kv.snapshot(1)
            kv.set(b"b", b"2")  # unsealed: dropped by the swap
            assert kv.restore(1) == 1
            assert dict(kv.items()) == {b"a": b"1"} and kv.seal() == files
    finally:
        register_remote_factory(None)
    assert calls == ["fake://x", "empty", "close"]
