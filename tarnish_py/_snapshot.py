"""Task state that survives crashes (SPEC §7): the state codec, the worker's side of
snapshot and restore, restore_on_crash bookkeeping, and the snapshot file format.

::

    parent  Process.snapshot()   SNAPSHOT --> worker  encode(task.snapshot())  --> Result(state)
            decode(state) -> S   <------------
    parent  Process.restore(s)   RESTORE(encode(s)) --> worker  task.restore(decode(state))
    restore_on_crash (per slot, :class:`StateKeeper`):
            call(x)              CALL_KEEP(x) --> worker  run(x), then encode(task.snapshot())
                                 Result([out, state]) <--  the parent keeps ``state`` (plain)
                                 Result([out])        <--  the state is the one last sent
            a worker that does not hold the kept state (a replacement after a crash,
            timeout, restart or recycle) gets RESTORE(kept) before its first request
    file    MAGIC + msgpack {"format": 1, "task": "module:name", "state": plain}
            written to a temporary file in the same folder, fsynced, then os.replace'd

``S`` is the return annotation of the task's ``snapshot()``; one :class:`StateCodec`
per class validates it on both sides, as ``_task.Codec`` does for In and Out.
The state crosses the wire, and lands in a file, in its plain (dumped) form.
"""

from __future__ import annotations

import os
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from pydantic import TypeAdapter

from . import _protocol, _wire
from ._errors import ProtocolError, TaskError
from ._task import Codec, Task, task_location

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "StateCodec",
    "StateKeeper",
    "answer",
    "check_restore_on_crash",
    "read_file",
    "reply_failed",
    "require_state_codec",
    "state_codec",
    "task_identity",
    "write_file",
]

MAGIC: Final = b"TARNISH_PY SNAPSHOT\n"
FORMAT_VERSION: Final = 1

# Values of these types are already plain: no dump after validation.
_PLAIN_TYPES = frozenset({int, str, bytes, float, bool})


class StateCodec:
    """How one task class's state is validated and made plain (built once per class)."""

    __slots__ = ("adapter", "decode", "encode", "type")

    def __init__(self, state_type: Any, module: str) -> None:
        adapter: TypeAdapter[Any] = TypeAdapter(state_type, module=module)
        self.type = state_type
        self.adapter = adapter
        validate = adapter.validate_python
        #: A plain state (from the wire or a file) as ``S``.
        self.decode: Callable[[Any], Any] = validate
        #: An ``S`` validated and made plain for the wire or a file.
        self.encode: Callable[[Any], Any] = (
            validate
            if state_type in _PLAIN_TYPES
            else lambda value: adapter.dump_python(validate(value))
        )


def state_codec(cls: type[Task[Any, Any]]) -> StateCodec | None:
    """The state codec of a task class, or None when it has neither hook.

    A class with only one of ``snapshot``/``restore``, or a ``snapshot`` without a
    return annotation, is a TypeError: it cannot be what its author meant.
    """
    built = cls.__dict__.get("_tarnish_state_codec")
    if built is not None:
        return built  # type: ignore[no-any-return]
    has_snapshot = callable(getattr(cls, "snapshot", None))
    has_restore = callable(getattr(cls, "restore", None))
    if not (has_snapshot or has_restore):
        return None
    name = cls.__qualname__
    if not (has_snapshot and has_restore):
        missing = "restore(self, state)" if has_snapshot else "snapshot(self) -> S"
        raise TypeError(f"{name} has only one of the state hooks; add {missing}")
    hints = typing.get_type_hints(cls.snapshot, include_extras=True)  # type: ignore[attr-defined]
    if "return" not in hints:
        raise TypeError(
            f"{name}.snapshot() needs a return annotation: it is the type of the state "
            f"(for example: def snapshot(self) -> int)"
        )
    built = StateCodec(hints["return"], cls.__module__)
    type.__setattr__(cls, "_tarnish_state_codec", built)
    return built


def require_state_codec(cls: type[Task[Any, Any]], what: str) -> StateCodec:
    """The state codec of ``cls``; a TypeError naming ``what`` needed it when it has none."""
    built = state_codec(cls)
    if built is None:
        name = getattr(cls, "_tarnish_origin", cls.__qualname__)  # an @task: its function
        raise TypeError(
            f"{what} needs the state hooks, which {name} does not define: "
            "def snapshot(self) -> S and def restore(self, state: S) -> None"
        )
    return built


def check_restore_on_crash(cls: type[Task[Any, Any]], value: Any, where: str) -> None:
    """Validate a handle's ``restore_on_crash`` keyword (at construction, like the others)."""
    if not isinstance(value, bool):
        raise TypeError(f"{where}: restore_on_crash must be True or False, not {value!r}")
    if value:
        task_location(cls)  # a TypeError for anything but a Task class
        require_state_codec(cls, f"{where} with restore_on_crash=True")


def task_identity(cls: type[Task[Any, Any]]) -> str:
    """What a snapshot file records as its task: ``module:QualName`` or ``module:@label``."""
    module, name = task_location(cls)
    return f"{module}:{name}"


# -- in the worker -------------------------------------------------------------


def answer(instance: Task[Any, Any], request: _protocol.StateRequest, task_codec: Codec) -> Any:
    """The plain value the worker replies to a SNAPSHOT, RESTORE or CALL_KEEP request.

    Anything raised (by a hook, or by validation) becomes the request's Error.
    """
    states = require_state_codec(type(instance), "a snapshot request")
    kind = request.kind
    if kind == _protocol.CALL_KEEP:
        out = task_codec.encode_output(instance.run(task_codec.decode_input(request.value)))
        state = states.encode(instance.snapshot())  # type: ignore[attr-defined]
        packed = _wire.pack(state)
        if packed == _sent.packed:
            return [out]  # the parent keeps this very state already
        _sent.packed = packed
        return [out, state]
    if kind == _protocol.SNAPSHOT:
        return states.encode(instance.snapshot())  # type: ignore[attr-defined]
    _sent.packed = None  # the parent's kept state is about to change
    instance.restore(states.decode(request.value))  # type: ignore[attr-defined]
    return None


class _Sent:
    """In a worker: the packed state its last CALL_KEEP reply sent to the parent.

    A state equal to it is not sent again: a large state that rarely changes then
    costs a comparison per call, not a trip over the pipe. None whenever the
    parent's kept state may differ (nothing sent yet, a restore, a failed reply).
    """

    packed: bytes | None = None


_sent = _Sent()


def reply_failed() -> None:
    """In a worker: a reply was not sent after all, so the next state must be."""
    _sent.packed = None


# -- in the parent: restore_on_crash ---------------------------------------------

_NOTHING: Any = object()


class StateKeeper:
    """restore_on_crash for one worker position (``_slot.Slot.keeper``).

    Keeps the plain state the last successful call left, and which connection
    (worker) holds it. Used by the slot's holder only, so it needs no lock.
    """

    __slots__ = ("_holder", "_state")

    def __init__(self) -> None:
        self._state: Any = _NOTHING
        self._holder: object = None

    def before(
        self,
        conn: object,
        kind: int,
        call: Callable[[Any, float | None, int], Any],
        timeout: float | None,
    ) -> int:
        """Called before each request to ``conn``: restore the kept state into a worker
        that lacks it (with the slot's ``call``); returns the kind to send instead."""
        if kind == _protocol.RESTORE:
            return kind
        if self._state is not _NOTHING and self._holder is not conn:
            try:
                call(self._state, timeout, _protocol.RESTORE)
            except TaskError:
                # The task's restore() refused its own state: say so once, then let
                # the worker go on from a fresh state rather than fail every call.
                self._state = _NOTHING
                raise
        return _protocol.CALL_KEEP if kind == _protocol.CALL else kind

    def after(self, conn: object, kind: int, payload: Any, value: Any) -> Any:
        """Called with each successful reply from ``conn``; returns the caller's value."""
        if kind == _protocol.CALL_KEEP:
            if type(value) is not list or not 1 <= len(value) <= 2:
                raise ProtocolError(f"the worker answered a call without its state: {value!r:.200}")
            if len(value) == 2:
                self._state = value[1]
            # else: unchanged since the state this worker last sent (or was restored to)
            value = value[0]
            self._holder = conn
        elif kind == _protocol.RESTORE:
            self._state = payload
            self._holder = conn
        return value


# -- snapshot files --------------------------------------------------------------


def write_file(path: str | os.PathLike[str], task: type[Task[Any, Any]], state: Any) -> Path:
    """Write a snapshot file atomically: a crash mid-write leaves the old file (or none)."""
    target = Path(path)
    record = {"format": FORMAT_VERSION, "task": task_identity(task), "state": state}
    data = MAGIC + _wire.pack(record)
    folder = target.parent
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)
    return target


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_file(path: str | os.PathLike[str], task: type[Task[Any, Any]]) -> Any:
    """The plain state of a snapshot file made by ``task``; ValueError for any other file."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError(f"{os.fspath(path)} is not a tarnish_py snapshot file")
    try:
        record = _wire.unpack(data[len(MAGIC) :])
    except Exception as exc:
        raise ValueError(f"{os.fspath(path)} is a damaged tarnish_py snapshot file") from exc
    if not isinstance(record, dict) or not {"format", "task", "state"} <= record.keys():
        raise ValueError(f"{os.fspath(path)} is a damaged tarnish_py snapshot file")
    if record["format"] != FORMAT_VERSION:
        raise ValueError(
            f"{os.fspath(path)} has snapshot format {record['format']!r}; this tarnish_py "
            f"reads format {FORMAT_VERSION}"
        )
    made_by, this = record["task"], task_identity(task)
    if made_by != this:
        raise ValueError(
            f"{os.fspath(path)} is a snapshot of task {made_by}, not of {this}: "
            "a state can only be restored into the task that made it"
        )
    return record["state"]
