"""The keywords every handle takes, their defaults and their validation, once.

``Process``, ``ProcessPool``, ``@task`` (and every other way in) take
``**keywords: Unpack[HandleKeywords]``: a type checker knows each keyword and
its type, and :class:`Settings` refuses an unknown keyword or a bad value at
construction (for ``@task``, at decoration) rather than at the first call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from typing_extensions import TypedDict

from ._wire import DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["DEFAULTS", "HandleKeywords", "Limits", "Settings", "check_call_timeout"]

StartMethod = Literal["auto", "exec"]
StderrMode = Literal["forward", "capture", "log"]
Env = Sequence[str] | Mapping[str, str] | None


def _seconds(name: str, value: Any, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        allowed = "a positive number of seconds" + (" or None" if optional else "")
        raise TypeError(f"{name} must be {allowed}, not {value!r}")
    if not value > 0 or math.isnan(value):
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")


def check_call_timeout(timeout: Any) -> None:
    """Refuse a per-call ``timeout=`` that is neither None nor a positive number of seconds."""
    if type(timeout) is float or type(timeout) is int:  # the common case, cheaply
        if timeout > 0:
            return
    _seconds("timeout", timeout, optional=True)


def _positive_int(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        allowed = "a positive int" + (" or None" if optional else "")
        raise TypeError(f"{name} must be {allowed}, not {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, not {value!r}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {value!r}")


def _check_env(env: Any) -> None:
    if env is None:
        return
    if isinstance(env, Mapping):
        bad = [(k, v) for k, v in env.items() if not (isinstance(k, str) and isinstance(v, str))]
        if bad:
            raise TypeError(f"env maps names to values, both str; not {bad[0]!r}")
        return
    if isinstance(env, (str, bytes)) or not isinstance(env, Sequence):
        raise TypeError(
            "env must be None (inherit), a sequence of variable names to pass through, "
            f"or a mapping of the whole environment; not {env!r}"
        )
    bad_names = [name for name in env if not isinstance(name, str) or not name]
    if bad_names:
        raise TypeError(f"env names must be non-empty str, not {bad_names[0]!r}")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits applied with ``setrlimit`` in each worker before its task is made.

    Every field is optional (None: unlimited, as inherited): ``memory`` (bytes of
    address space, RLIMIT_AS), ``cpu_seconds`` (RLIMIT_CPU), ``open_files``
    (RLIMIT_NOFILE), ``processes`` (RLIMIT_NPROC: processes of the user),
    ``file_size`` (bytes, RLIMIT_FSIZE). ::

        Process(Decode, limits=Limits(memory=2 * 1024**3, cpu_seconds=60))
    """

    memory: int | None = None
    cpu_seconds: int | None = None
    open_files: int | None = None
    processes: int | None = None
    file_size: int | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _positive_int(f"Limits.{field.name}", getattr(self, field.name), optional=True)


class HandleKeywords(TypedDict, total=False):
    """The keywords every handle takes (SPEC §2); see :class:`Settings` for defaults."""

    timeout: float | None
    shutdown_timeout: float
    spawn_timeout: float
    max_message_bytes: int
    env: Env
    limits: Limits | None
    max_calls: int | None
    max_memory: int | None
    start: StartMethod
    stderr: StderrMode
    stderr_tail: int


@dataclasses.dataclass(frozen=True)
class Settings:
    """A handle's keywords, validated. The defaults here are the documented ones."""

    timeout: float | None = None  # seconds a call may run
    shutdown_timeout: float = 5.0  # grace for running calls at close()
    spawn_timeout: float = 60.0  # seconds a worker may take to become ready
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    env: Env = None  # None: inherit; names: scrubbed to PATH + those; mapping: exactly that
    limits: Limits | None = None
    max_calls: int | None = None  # recycle a worker after this many calls
    max_memory: int | None = None  # recycle a worker whose RSS after a call exceeds this
    start: StartMethod = "auto"  # "auto": fork server where safe; "exec": re-execute
    stderr: StderrMode = "forward"
    stderr_tail: int = 32 * 1024  # bytes of a worker's stderr kept for WorkerCrashed.stderr

    def __post_init__(self) -> None:
        _seconds("timeout", self.timeout, optional=True)
        _seconds("shutdown_timeout", self.shutdown_timeout, optional=False)
        _seconds("spawn_timeout", self.spawn_timeout, optional=False)
        _positive_int("max_message_bytes", self.max_message_bytes)
        _check_env(self.env)
        if self.env is not None and not isinstance(self.env, Mapping):
            object.__setattr__(self, "env", tuple(self.env))
        elif isinstance(self.env, Mapping):
            object.__setattr__(self, "env", dict(self.env))
        if self.limits is not None and not isinstance(self.limits, Limits):
            raise TypeError(f"limits must be a tarnish_py.Limits or None, not {self.limits!r}")
        _positive_int("max_calls", self.max_calls, optional=True)
        _positive_int("max_memory", self.max_memory, optional=True)
        _choice("start", self.start, ("auto", "exec"))
        _choice("stderr", self.stderr, ("forward", "capture", "log"))
        _positive_int("stderr_tail", self.stderr_tail)

    @classmethod
    def of(cls, keywords: Mapping[str, Any], where: str) -> Settings:
        """Settings from a handle's keyword arguments; an unknown name is a TypeError."""
        unknown = sorted(set(keywords) - _NAMES)
        if unknown:
            raise TypeError(
                f"{where} got unexpected keyword argument(s) {', '.join(unknown)}; "
                f"the handle keywords are {', '.join(sorted(_NAMES))}"
            )
        return cls(**keywords)

    def keywords(self) -> HandleKeywords:
        """The settings as keyword arguments of a handle."""
        values: dict[str, Any] = {f.name: getattr(self, f.name) for f in _FIELDS}
        return values  # type: ignore[return-value]


_FIELDS = dataclasses.fields(Settings)
_NAMES = frozenset(f.name for f in _FIELDS)
DEFAULTS = Settings()
