"""Where the default session store lives.

``$BEAMAGENT_STORE`` when set and not empty (``~`` is expanded; ``:memory:`` selects an
in-memory store), else ``sessions.db`` in the user data directory
(``platformdirs.user_data_dir("beamagent")``, e.g. ``~/.local/share/beamagent`` on Linux).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import platformdirs

__all__ = ["DEFAULT_FILENAME", "ENV_VAR", "MEMORY_SPEC", "default_store_path"]

ENV_VAR = "BEAMAGENT_STORE"
DEFAULT_FILENAME = "sessions.db"
MEMORY_SPEC = ":memory:"


def default_store_path(environ: Mapping[str, str] | None = None) -> Path:
    """The default store file (``Path(":memory:")`` when the variable asks for memory).

    >>> default_store_path({"BEAMAGENT_STORE": "/tmp/s.db"})
    PosixPath('/tmp/s.db')
    """
    env = os.environ if environ is None else environ
    configured = env.get(ENV_VAR, "")
    if configured == MEMORY_SPEC:
        return Path(MEMORY_SPEC)
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_data_dir("beamagent")) / DEFAULT_FILENAME
