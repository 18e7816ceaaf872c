"""The lazy package exports of ``raykv``, ``raykv.operators`` and ``raykv.sources`` (``lazy.py``).

A shard or reader process imports only the operator and source modules its run uses;
every public name still resolves, through ``from ... import`` and ``import *`` too.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import raykv
import raykv.operators
import raykv.sources


@pytest.mark.parametrize("package", [raykv, raykv.operators, raykv.sources])
def test_every_public_name_resolves_once_and_is_listed(package: object) -> None:
    names = package.__all__  # type: ignore[attr-defined]
    assert len(set(names)) == len(names)
    for name in names:
        value = getattr(package, name)
        assert value is not None
        assert name in vars(package)  # cached: the next access is a plain attribute
        assert name in dir(package)
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchOperator'"):
        package.NoSuchOperator  # type: ignore[attr-defined]  # noqa: B018


def test_star_import_and_from_import_give_the_modules_objects() -> None:
    scope: dict[str, object] = {}
    exec("from raykv.operators import *\nfrom raykv.sources import *", scope)
    from raykv.operators.aggregate import Aggregate
    from raykv.operators.joins.interval import IntervalJoin
    from raykv.sources.parquet import ParquetSource

    assert scope["Aggregate"] is Aggregate
    assert scope["IntervalJoin"] is IntervalJoin
    assert scope["ParquetSource"] is ParquetSource


def test_a_shard_process_imports_no_operator_or_source_it_does_not_run() -> None:
    """Checked in a fresh interpreter: this one has imported them all long ago."""
    code = ("import sys\n"
            "import raykv.runtime.actors\n"
            "import raykv.runtime.reader_actor\n"
            "loaded = sorted(m for m in sys.modules if m.startswith(('raykv.operators.',"
            " 'raykv.sources.')))\n"
            "unused = [m for m in loaded if m.rsplit('.', 1)[1] not in"
            " ('base', 'watermark', 'schemas')]\n"
            "assert not unused, unused\n"
            "from raykv.operators import Aggregate\n"
            "assert 'raykv.operators.aggregate' in sys.modules\n"
            "assert 'raykv.operators.topn' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
