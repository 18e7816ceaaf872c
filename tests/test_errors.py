"""Failures reach the user whole (issue 16, ``docs/recovery.md``, "Failure classification").

1. Every exception class raykv defines survives pickling, and so a Ray actor boundary,
   with its type, message and attributes (discovered programmatically: a new class that
   does not pickle fails here).
2. A corrupt run file met by a restore fails the run at once with the ``CorruptionError``:
   file, check, epoch, and the committed epochs that are still intact.
3. An exception of user code reaches ``run()`` as the user's exception, with stage, shard,
   key, epoch and the remote traceback noted.
4. The repeat rule: a failure that happens again at the same epoch after a recovery stops
   the run; a SIGKILLed shard still recovers, however often.
5. The "gave up" error keeps the last failure as its ``__cause__``.

Pipelines use tests/test_recovery.py's workload (epochs 1-4 of 2 batches, then the final
epoch 5). Time to an error is asserted as a number of attempts (``"starting"`` progress
events) and restarts, never in seconds.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import pkgutil
import signal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import raykv
from raykv.checkpointing import CheckpointStore
from raykv.errors import CorruptionError, UserCodeError, add_context, failure_context
from raykv.operators import StatefulMap
from raykv.sources import TableSource
from raykv.testing import Faults
from tests.test_recovery import BATCH, EVERY, N, assert_exact, make, table

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
            "TestingAbort", "ShardFailure"} <= names


@pytest.mark.parametrize("cls", raykv_exception_classes(), ids=lambda c: c.__qualname__)
def test_every_raykv_exception_survives_pickling(cls: type[BaseException]) -> None:
    err = sample_instance(cls)
    assert_same_exception(pickle.loads(pickle.dumps(err)), err)
    import ray.cloudpickle  # what Ray uses for an actor's exception

    assert_same_exception(ray.cloudpickle.loads(ray.cloudpickle.dumps(err)), err)


def test_corruption_error_keeps_its_restorable_epochs_through_pickling() -> None:
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


# ---------------------------------------------------------------------------- pipelines


class Events:
    """on_progress hook recording every event (and optionally calling ``then``)."""

    def __init__(self, then: Any = None) -> None:
        self.events: list[raykv.ProgressEvent] = []
        self.then = then

    def __call__(self, ev: raykv.ProgressEvent) -> None:
        self.events.append(ev)
        if self.then is not None:
            self.then(ev)

    def of(self, kind: str) -> list[raykv.ProgressEvent]:
        return [e for e in self.events if e.kind == kind]

    @property
    def attempts(self) -> int:
        return len(self.of("starting"))


def full_text(err: BaseException) -> str:
    """What a traceback shows of ``err``: its message and its notes."""
    return "\n".join([str(err), *getattr(err, "__notes__", [])])


def test_corrupt_run_file_fails_the_restore_at_once(ray_session: Any, tmp_path: Path) -> None:
    """Issue 16 case 1: a flipped byte in a run file of epoch 3, restored on a fresh node."""
    t = table(41)
    first = make(tmp_path, t).run()
    assert first.epochs_committed == [1, 2, 3, 4, 5]
    store = CheckpointStore(str(tmp_path / "ckpt"))
    refs = {e: {(sh, f.name) for sh, f in store.read_epoch(e).file_refs()} for e in range(1, 6)}
    shard, name = sorted(refs[3] - refs[2] - refs[1])[0]  # written in epoch 3
    path = tmp_path / "ckpt" / "files" / shard / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    intact = []
    for e in range(1, 6):
        try:
            store.verify(e)
            intact.append(e)
        except CorruptionError:
            pass
    assert 1 in intact and 3 not in intact

    events = Events()
    p = make(tmp_path, t, local_dir=str(tmp_path / "fresh"), on_progress=events)
    with pytest.raises(CorruptionError) as info:
        p.run(restore_epoch=3)
    err = info.value
    assert type(err) is CorruptionError  # itself, not UnserializableException or RuntimeError
    assert err.path.endswith(f"{shard}/{name}") and err.check == "checksum"
    assert err.epoch == 3 and err.committed == [1, 2, 3, 4, 5] and err.restorable == intact
    text = str(err)
    assert name in text and "checksum check failed" in text and "epoch 3 cannot be restored" in text
    listed = ", ".join(map(str, intact))
    assert f"intact (every file present and matching its checksum): {listed}" in text
    assert f"run(restore_epoch={intact[-1]})" in text
    # at once: one attempt, no restart; the fatal event says why
    assert events.attempts == 1 and not events.of("failure")
    (fatal,) = events.of("fatal")
    assert fatal.detail["reason"] == "corrupt checkpoint" and fatal.epoch == 3
    # the intact epoch it names does restore
    s = make(tmp_path, t, local_dir=str(tmp_path / "fresh2")).run(restore_epoch=intact[-1])
    assert s.restored_from == intact[-1] and s.finished


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


POISON_ROW = 4 * BATCH + 123  # in batch 4: epoch 3


def _poisoned(state: Any, row: dict[str, Any]) -> tuple[Any, Any]:
    n = (state or 0) + 1
    if row["seq"] == POISON_ROW:
        n = n / 0  # the user's bug
    return n, None


def _with_seq(t: pa.Table) -> pa.Table:
    return t.append_column("seq", pa.array(range(t.num_rows), pa.int64()))


def _map_pipeline(tmp_path: Path, t: pa.Table, fn: Any, **kw: Any) -> raykv.Pipeline:
    return raykv.Pipeline(
        source=TableSource(t, batch_size=BATCH), stages=[StatefulMap("user", fn, name="m")],
        engine="hybridlog", checkpoint=str(tmp_path / "ckpt"),
        local_dir=str(tmp_path / "local"), epoch_every_batches=EVERY, retain=10,
        source_parallelism=1, **{"num_shards": 2, **kw})


def test_poison_row_in_a_stateful_map_stops_after_one_retry(
    ray_session: Any, tmp_path: Path
) -> None:
    """Issue 16 case 2: the user's ZeroDivisionError, with context, after 2 attempts."""
    t = _with_seq(table(42))
    events = Events()
    with pytest.raises(ZeroDivisionError) as info:
        _map_pipeline(tmp_path, t, _poisoned, on_progress=events).run()
    err = info.value
    text = full_text(err)
    key = t["user"][POISON_ROW].as_py()
    assert str(err) == "division by zero"  # the user's exception itself
    assert "StatefulMap.fn raised ZeroDivisionError in stage 'm', shard m-" in text
    assert f"key {key}, epoch 3" in text
    assert "remote traceback" in text and "in _poisoned" in text and "n = n / 0" in text
    assert "happened at epoch 3 in attempt 0 and again in attempt 1" in text
    assert failure_context(err)["epoch"] == 3 and failure_context(err)["key"] == repr(key)
    # one recovery, then the repeat stops it: 2 attempts, not max_restarts (10) + 1
    assert events.attempts == 2
    (failure,) = events.of("failure")
    assert failure.epoch == 3 and failure.detail["reason"] == "first occurrence"
    assert isinstance(failure.error, ZeroDivisionError)
    (fatal,) = events.of("fatal")
    assert fatal.epoch == 3 and fatal.restarts == 1
    assert fatal.detail["reason"] == "repeated" and fatal.detail["first_attempt"] == 0
    assert fatal.detail["attempt"] == 1
    # the epochs before the poison are committed and restorable
    store = CheckpointStore(str(tmp_path / "ckpt"))
    assert store.epochs() == [1, 2] and "last committed epoch is 2" in text
    store.verify(2)


class _StubbornError(Exception):
    """A user exception that cannot be unpickled (its __init__ args are not its args)."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"code {code}: {why}")


def _stubborn(state: Any, row: dict[str, Any]) -> tuple[Any, Any]:
    if row["seq"] == 5:
        raise _StubbornError(7, "no")
    return None, None


def test_user_exception_that_cannot_cross_an_actor_arrives_as_user_code_error(
    ray_session: Any, tmp_path: Path
) -> None:
    t = _with_seq(table(43).slice(0, 2 * BATCH))
    events = Events()
    with pytest.raises(UserCodeError) as info:  # one shard: the error's crossing is checked
        _map_pipeline(tmp_path, t, _stubborn, on_progress=events, num_shards=1).run()
    err = info.value
    assert err.error_type.endswith("_StubbornError") and err.context["epoch"] == 1
    assert "StatefulMap.fn raised _StubbornError in stage 'm'" in str(err)
    assert "code 7: no" in str(err) and "in _stubborn" in str(err)
    assert events.attempts == 2 and events.of("fatal")[0].detail["reason"] == "repeated"


def test_source_error_names_the_source_and_epoch(ray_session: Any, tmp_path: Path) -> None:
    """An error of the source: raised at once (not retried), naming split, offset, epoch."""
    t = table(44)

    def batch(i: int) -> pa.RecordBatch | None:
        if i == 3:
            raise KeyError("partition 3")
        return t.slice(i * BATCH, BATCH).to_batches()[0] if i * BATCH < N else None

    p = make(tmp_path, t, num_shards=1)  # the reader fails: one shard is enough
    p.source = raykv.sources.GeneratorSource(batch)
    with pytest.raises(KeyError) as info:
        p.run()
    text = full_text(info.value)
    assert ("source GeneratorSource.read of split 'all' at offset 3 raised KeyError in "
            "reader 0, epoch 2") in text, text
    assert "Traceback" in text  # the reader's traceback travels as a note


class _SinkBroke(Exception):
    pass


class _BreakingSink(raykv.sinks.CollectSink):
    """A user sink whose publish of epoch 2 fails."""

    def publish(self, epoch: int) -> None:
        if epoch == 2:
            raise _SinkBroke("the sink's database refused epoch 2")
        super().publish(epoch)


def test_sink_error_names_the_call_and_epoch(ray_session: Any, tmp_path: Path) -> None:
    """Driver-side user code in the commit thread: raised at once, the user's type."""
    events = Events()
    with pytest.raises(_SinkBroke) as info:
        make(tmp_path, table(47), sink=_BreakingSink(), on_progress=events,
             num_shards=1).run()  # the driver's publish fails: one shard is enough
    text = full_text(info.value)
    assert "sink _BreakingSink.publish(2) raised _SinkBroke in the driver at epoch 2" in text
    assert events.attempts == 1 and events.of("fatal")[0].detail["reason"] == "driver"


class SigKiller:
    """on_progress hook: SIGKILL the process of shard ``index`` at barrier ``epoch`` of
    each attempt in ``attempts`` (a real process death, not ``ray.kill``).

    The pid is asked at ``"started"``: later, ``ping`` would queue in the shard's
    ``"io"`` thread behind ``wait_uploaded`` and the kill would land epochs late.
    """

    def __init__(self, epoch: int, attempts: tuple[int, ...], index: int = 0) -> None:
        self.epoch, self.attempts, self.index = epoch, attempts, index
        self.attempt = -1
        self.pid = 0
        self.killed: list[int] = []

    def __call__(self, ev: raykv.ProgressEvent) -> None:
        import ray

        if ev.kind == "started":
            self.attempt = ev.detail["attempt"]
            self.pid = ray.get(ev.shards[sorted(ev.shards)[self.index]].ping.remote(), timeout=30)
        elif (ev.kind == "barrier" and ev.epoch == self.epoch and self.attempt in self.attempts
              and self.attempt not in self.killed):
            self.killed.append(self.attempt)
            os.kill(self.pid, signal.SIGKILL)


def test_sigkilled_shard_recovers_even_twice_at_the_same_epoch(
    ray_session: Any, tmp_path: Path
) -> None:
    """Transient failures are not subject to the repeat rule."""
    t = table(45)
    kill = SigKiller(epoch=2, attempts=(0, 1))
    events = Events(then=kill)
    s = make(tmp_path, t, faults=Faults(process_delay=0.05), on_progress=events).run()
    assert kill.killed == [0, 1]
    assert s.restarts == 2 and events.attempts == 3 and not events.of("fatal")
    assert [f["reason"] for f in s.failures] == ["transient", "transient"]
    assert all(f["action"] == "recover" for f in s.failures)
    assert_exact(s.output_by_epoch, t)


def test_gave_up_keeps_the_last_failure_as_its_cause(ray_session: Any, tmp_path: Path) -> None:
    import ray

    t = table(46)
    events = Events()
    faults = Faults(crash_at=("Aggregate0-0", "process", 1), crash_attempts=(0, 1))
    with pytest.raises(RuntimeError, match=r"gave up after 1 restarts") as info:
        make(tmp_path, t, engine="memonly", faults=faults, max_restarts=1,
             on_progress=events).run()
    assert isinstance(info.value.__cause__, ray.exceptions.RayActorError)
    assert events.attempts == 2 and len(events.of("failure")) == 1
    (fatal,) = events.of("fatal")
    assert fatal.detail["reason"] == "max_restarts" and fatal.error is info.value.__cause__
