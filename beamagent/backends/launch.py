"""How the CLI backends find and start their program: executable, argv, environment.

Shared by every subprocess backend (``claude``, ``codex``...). Pure functions
over the session options; nothing here starts a process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from beamagent.errors import InvalidOption

__all__ = [
    "LAUNCH_OPTIONS",
    "cli_availability",
    "cli_not_required",
    "command_prefix",
    "extra_args",
    "launch_env",
    "locate_cli",
    "require_cli",
]

LAUNCH_OPTIONS: Final = frozenset(
    {"cli_path", "env", "inherit_env", "extra_args", "command_prefix"}
)
"""Options every CLI backend accepts (see :func:`launch_env` and friends)."""

_PROJECT_BIN: Final = Path(__file__).resolve().parents[2] / "node_modules" / ".bin"


def locate_cli(name: str, cli_path: Any = None) -> Path | None:
    """The executable for CLI ``name``.

    ``cli_path`` (the session option) wins; else the source tree's pinned
    ``node_modules/.bin/<name>`` (what ``make test`` installs); else ``PATH``.
    Returns None when none exists.
    """
    if cli_path is not None:
        candidate = Path(os.fspath(cli_path)).expanduser()
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        found = shutil.which(str(cli_path))
        return Path(found) if found else None
    local = _PROJECT_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    return Path(found) if found else None


def cli_availability(name: str, package: str) -> tuple[bool, str]:
    """``(available, why)`` for a backend whose program is CLI ``name`` from npm ``package``."""
    path = locate_cli(name)
    if path is None:
        return (
            False,
            f"the {name!r} executable was not found on PATH; install it with "
            f"`npm install -g {package}` or pass cli_path=...",
        )
    return True, f"available at {path}"


_replaying = threading.local()


@contextlib.contextmanager
def cli_not_required() -> Iterator[None]:
    """In this thread, handlers are built without their CLI (a cassette replay runs none).

    :func:`require_cli` then answers the path it was given, or the bare name, when the
    executable is missing.
    """
    before = getattr(_replaying, "on", False)
    _replaying.on = True
    try:
        yield
    finally:
        _replaying.on = before


def require_cli(name: str, package: str, cli_path: Any) -> Path:
    """Like :func:`locate_cli`, but raise ``InvalidOption`` saying what to do when missing."""
    path = locate_cli(name, cli_path)
    if path is None and getattr(_replaying, "on", False):
        return Path(os.fspath(cli_path)) if cli_path is not None else Path(name)
    if path is None:
        where = f"cli_path={cli_path!r} is not an executable" if cli_path else "not on PATH"
        raise InvalidOption(
            f"cannot start the {name} backend: the {name!r} executable is {where}; "
            f"install it with `npm install -g {package}` or pass cli_path=..."
        )
    return path


def _str_list(value: Any, option: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidOption(f"option {option!r} must be a list of strings; got {value!r}")
    items = [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
    if not all(isinstance(v, str) for v in items):
        raise InvalidOption(f"option {option!r} must be a list of strings; got {value!r}")
    return list(items)


def command_prefix(options: Mapping[str, Any]) -> list[str]:
    """The ``command_prefix`` option: argv run before the CLI (e.g. ``nsenter --net=...``)."""
    return _str_list(options.get("command_prefix"), "command_prefix")


def extra_args(options: Mapping[str, Any]) -> list[str]:
    """The ``extra_args`` option as argv.

    A list is appended as given; a mapping ``{"flag": value}`` becomes
    ``--flag value`` (``None``: a bare ``--flag``).
    """
    value = options.get("extra_args")
    if isinstance(value, Mapping):
        argv: list[str] = []
        for flag, arg in value.items():
            if not isinstance(flag, str) or not flag:
                raise InvalidOption(f"extra_args keys must be flag names; got {flag!r}")
            argv.append(flag if flag.startswith("-") else f"--{flag}")
            if arg is not None:
                argv.append(str(arg))
        return argv
    return _str_list(value, "extra_args")


def launch_env(
    options: Mapping[str, Any],
    *,
    drop: Sequence[str] = (),
    set_default: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The CLI's environment.

    This process's environment (unless ``inherit_env=False``) minus ``drop``,
    then ``set_default`` where unset, then the ``env`` option on top.
    """
    env_option = options.get("env") or {}
    if not isinstance(env_option, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env_option.items()
    ):
        raise InvalidOption("option 'env' must map str to str")
    inherit = options.get("inherit_env", True)
    if not isinstance(inherit, bool):
        raise InvalidOption(f"option 'inherit_env' must be a bool; got {inherit!r}")
    env = dict(os.environ) if inherit else {}
    for name in drop:
        env.pop(name, None)
    for name, value in (set_default or {}).items():
        env.setdefault(name, value)
    env.update(env_option)
    return env
