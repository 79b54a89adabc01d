"""The environment a worker starts with: the ``env=`` keyword.

::

    env=None             the parent's os.environ, as it is at spawn
    env=["HOME", ...]    PATH + those names, values from the parent's os.environ
                         at spawn (a name the parent lacks is simply absent)
    env={"K": "v", ...}  exactly that mapping, + the parent's PATH if it has none

    scrubbed (not None): the interpreter's start-up variables the parent had
    (PYTHONPATH, PYTHONHOME ...; see STARTUP) are added unless the user gave
    them, so the re-executed program or ``python -c`` finds tarnish_py and every
    module the parent found; ``carried()`` names them in the marker, and the
    worker drops them from its os.environ when it imports tarnish_py (with the
    marker itself), before any task code runs.

Pure functions of the setting and ``os.environ``: ``_spawn`` calls
:func:`worker_env` for each process it starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

__all__ = ["STARTUP", "EnvSetting", "carried", "worker_env"]

EnvSetting = Sequence[str] | Mapping[str, str] | None

# What makes an interpreter find the modules it finds: the parent started with
# these, so a worker started the same way must too.
STARTUP = (
    "PYTHONHOME",
    "PYTHONPATH",
    "PYTHONPLATLIBDIR",
    "PYTHONSAFEPATH",
    "PYTHONNOUSERSITE",
    "PYTHONUSERBASE",
)


def _requested(env: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """The variables the user asked for, with their values (before start-up ones)."""
    parent = os.environ
    if isinstance(env, Mapping):
        chosen = dict(env)
        if "PATH" not in chosen and "PATH" in parent:
            chosen["PATH"] = parent["PATH"]
        return chosen
    names = ["PATH", *env]
    return {name: parent[name] for name in names if name in parent}


def carried(env: EnvSetting) -> tuple[str, ...]:
    """The start-up variables a worker must drop after start (the user did not ask
    for them); empty when the environment is inherited."""
    if env is None:
        return ()
    asked = env.keys() if isinstance(env, Mapping) else set(env)
    return tuple(name for name in STARTUP if name not in asked)


def worker_env(env: EnvSetting) -> dict[str, str]:
    """The environment to start a worker process with (the marker is added by the caller)."""
    if env is None:
        return dict(os.environ)
    chosen = _requested(env)
    for name in carried(env):
        value = os.environ.get(name)
        if value is not None:
            chosen[name] = value
    return chosen
