"""The keywords every handle takes, their defaults and their validation, once.

``Process``, ``ProcessPool`` and ``@task`` spell the keywords out in their
signatures (for type checkers and ``help()``), with the defaults of
:data:`DEFAULTS`, and hand them to :class:`Settings`, which refuses a bad value
at construction (for ``@task``, at decoration) rather than at the first call.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ._wire import DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["DEFAULTS", "Settings", "check_call_timeout"]


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


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, not {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, not {value!r}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """A handle's keywords, validated."""

    timeout: float | None = None
    shutdown_timeout: float = 5.0
    spawn_timeout: float = 60.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        _seconds("timeout", self.timeout, optional=True)
        _seconds("shutdown_timeout", self.shutdown_timeout, optional=False)
        _seconds("spawn_timeout", self.spawn_timeout, optional=False)
        _positive_int("max_message_bytes", self.max_message_bytes)

    def keywords(self) -> dict[str, Any]:
        """The settings as keyword arguments of a handle."""
        return dataclasses.asdict(self)


DEFAULTS = Settings()
