"""Failures reach the user whole (issue 16, ``docs/recovery.md``, "Failure classification").

1. Every exception class raykv defines survives pickling, and so a Ray actor boundary,
   with its type, message and attributes (discovered programmatically: a new class that
   does not pickle fails here).
2. ``raykv checkpoints verify`` names the committed epochs that are still intact.
3. Operators mark the exceptions of user code (functions, codecs) with what ran and the
   record's key, keeping their type.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import raykv
from raykv.checkpointing import CheckpointStore
from raykv.errors import add_context, failure_context
from raykv.operators import StatefulMap

# ---------------------------------------------------------------------------- pickling


def raykv_exception_classes() -> list[type[BaseException]]:
    """Every exception class defined in a ``raykv`` module (imports every module)."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(raykv.__path__, "raykv."):
        if info.name.endswith("__main__"):  # runs the CLI on import
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__.startswith("raykv")):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def _sample_value(name: str, annotation: Any) -> Any:
    text = str(annotation)
    if "BaseException" in text:
        return ValueError(f"inner {name}")
    if "dict" in text:
        return {"stage": "m", "epoch": 3}
    if "int" in text:
        return 7
    return f"sample-{name}"


def sample_instance(cls: type[BaseException]) -> BaseException:
    """An instance of ``cls`` with every ``__init__`` parameter set to a non-default value."""
    own_init = next((c for c in cls.__mro__ if "__init__" in vars(c)), BaseException)
    if own_init in (BaseException, Exception) or own_init.__module__ == "builtins":
        err = cls("sample message")
    else:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            value = _sample_value(p.name, p.annotation)
            if p.kind == p.KEYWORD_ONLY:
                kwargs[p.name] = value
            else:
                args.append(value)
        err = cls(*args, **kwargs)
    err.add_note("a note")
    add_context(err, stage="m", epoch=3)
    return err


def _comparable(value: Any) -> Any:
    """Exceptions compare by type and args (they have no value equality)."""
    if isinstance(value, BaseException):
        return (type(value), value.args, _comparable(vars(value)))
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_comparable(v) for v in value)
    return value


def assert_same_exception(got: BaseException, want: BaseException) -> None:
    assert type(got) is type(want)
    assert got.args == want.args
    assert str(got) == str(want)
    assert _comparable(vars(got)) == _comparable(vars(want))
    assert got.__notes__ == ["a note"]
    assert failure_context(got) == {"stage": "m", "epoch": 3}


def test_every_raykv_exception_class_is_found() -> None:
    names = {c.__qualname__ for c in raykv_exception_classes()}
    assert {"RaykvError", "CorruptionError", "FormatVersionError", "CheckpointNotFoundError",
            "StoreUnavailableError", "StoreClosedError", "UserCodeError", "StopSource",
            "TestingAbort", "_ShardFailure"} <= names


@pytest.mark.parametrize("cls", raykv_exception_classes(), ids=lambda c: c.__qualname__)
def test_every_raykv_exception_survives_pickling(cls: type[BaseException]) -> None:
    err = sample_instance(cls)
    assert_same_exception(pickle.loads(pickle.dumps(err)), err)
    import ray.cloudpickle  # what Ray uses for an actor's exception

    assert_same_exception(ray.cloudpickle.loads(ray.cloudpickle.dumps(err)), err)


def test_corruption_error_keeps_its_restorable_epochs_through_pickling() -> None:
    from raykv.errors import CorruptionError

    err = CorruptionError("ckpt/files/x.run", "checksum", offset=12, detail="d", epoch=3)
    err.set_restorable([1, 2, 3, 4], [1, 2], store="file:///ckpt")
    got = pickle.loads(pickle.dumps(err))
    assert (got.path, got.check, got.offset, got.epoch) == ("ckpt/files/x.run", "checksum", 12, 3)
    assert got.committed == [1, 2, 3, 4] and got.restorable == [1, 2]
    assert "epoch 3 cannot be restored" in str(got) and "run(restore_epoch=2)" in str(got)


class _Raiser:
    """A Ray actor that raises what it is given (the exception crosses twice)."""

    def raise_it(self, err: BaseException) -> None:
        raise err


@pytest.mark.ray
def test_every_raykv_exception_crosses_a_ray_actor(ray_session: Any) -> None:
    ray = ray_session
    actor = ray.remote(_Raiser).remote()
    try:
        for cls in raykv_exception_classes():
            want = sample_instance(cls)
            with pytest.raises(ray.exceptions.RayTaskError) as info:
                ray.get(actor.raise_it.remote(want))
            assert_same_exception(info.value.cause, want)
    finally:
        ray.kill(actor)


# ---------------------------------------------------------------------------- operators


class _BadCodec:
    """A user codec whose decode fails on one stored value."""

    name = "bad"

    def encode(self, obj: Any) -> bytes:
        return str(obj).encode()

    def decode(self, data: bytes) -> Any:
        if data == b"3":
            raise LookupError("no decoder for 3")
        return int(data)


def _run_operator(op: Any, tmp_path: Path, *batches: dict[str, list[Any]]) -> BaseException:
    from raykv.engines import MemOnly

    with MemOnly(str(tmp_path / "engine")) as store:
        logic = op.build(store)
        with pytest.raises(Exception) as info:
            for b in batches:
                logic.process(pa.record_batch(b))
            logic.finish()
    return info.value


def _div(acc: int, value: int) -> int:
    return acc // (value - 5)


def test_operators_mark_errors_of_user_code(tmp_path: Path) -> None:
    """The operator records what user code raised and the record's key; type unchanged."""
    from raykv.operators import Reduce

    err = _run_operator(Reduce("k", _div, "v"), tmp_path / "r", {"k": [1, 2, 2], "v": [7, 8, 5]})
    assert type(err) is ZeroDivisionError
    assert failure_context(err) == {"user_code": "Reduce.fn", "key": "2"}

    err = _run_operator(Reduce("k", max, "v", codec=_BadCodec()), tmp_path / "c",
                        {"k": ["a", "b"], "v": [1, 3]}, {"k": ["b"], "v": [2]})
    assert type(err) is LookupError
    assert failure_context(err) == {"user_code": "codec 'bad' decode", "key": "'b'"}

    err = _run_operator(StatefulMap("k", lambda s, r: ({1, 2}, None)), tmp_path / "j",
                        {"k": [4]})
    assert type(err) is TypeError  # bad input: raised at once by the driver
    assert failure_context(err) == {"user_code": "codec 'json' encode", "key": "4"}

    err = _run_operator(StatefulMap("k", lambda s, r: None), tmp_path / "p", {"k": ["x"]})
    assert "fn must return a (new_state, output) pair" in str(err)
    assert failure_context(err) == {"user_code": "StatefulMap.fn", "key": "'x'"}


# ---------------------------------------------------------------------------- verify


def test_checkpoints_verify_says_which_epochs_are_intact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from raykv.cli import main
    from tests.test_cli import make_store

    url, _ = make_store(tmp_path, epochs=4)
    store = CheckpointStore(url)
    refs = {e: {(sh, f.name) for sh, f in store.read_epoch(e).file_refs()} for e in range(1, 5)}
    shard, name = sorted(refs[3] - refs[2])[0]
    victim = Path(url.removeprefix("file://")) / "files" / shard / name
    victim.write_bytes(victim.read_bytes() + b"!")  # a length error
    want = store.intact_epochs()
    assert 2 in want and 3 not in want
    assert main(["checkpoints", "verify", url]) == 1
    err = capsys.readouterr().err
    assert name in err and "length check failed" in err
    listed = ", ".join(map(str, want))
    assert f"intact (every file present and matching its checksum): {listed}" in err
