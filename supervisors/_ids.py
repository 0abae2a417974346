"""Random ids: ``uuid.uuid4()`` strings, made ahead in batches.

``uuid.uuid4()`` builds a ``UUID`` object first (1.9 us); one ``os.urandom`` call per
id costs 0.8 us; a batch of 64 from one call, 0.1 us each. Every process start (its
URN) and every message the local agent or a session builds take one; every session
start takes two plain 128-bit hex ids (``new_hex128``: its id and the local agent's).
A batch also saves the GIL hand-off ``os.urandom`` makes on each call (it releases
the GIL around the ``getrandom`` system call).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

__all__ = ["new_hex128", "new_uuid4"]

_VARIANT: Final[Mapping[str, str]] = {f"{n:x}": f"{n & 0x3 | 0x8:x}" for n in range(16)}
_BATCH: Final = 64
# Made ahead, a batch at a time: ``pop`` and ``extend`` are atomic, so two threads never
# take the same one (racing refills only add more). Emptied in a forked child, which must
# not hand out its parent's.
_made: list[str] = []
_made_hex: list[str] = []
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_made.clear)
    os.register_at_fork(after_in_child=_made_hex.clear)


def _batch() -> list[str]:
    h = os.urandom(16 * _BATCH).hex()
    v = _VARIANT
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
        f"{v[h[i + 16]]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, 32 * _BATCH, 32)
    ]


def new_uuid4() -> str:
    """``str(uuid.uuid4())``: the same random source (``os.urandom``) and layout, cheaper."""
    while True:
        try:
            return _made.pop()
        except IndexError:
            _made.extend(_batch())


def new_hex128() -> str:
    """``os.urandom(16).hex()``: 128 random bits as 32 hex digits, from a batch."""
    while True:
        try:
            return _made_hex.pop()
        except IndexError:
            h = os.urandom(16 * _BATCH).hex()
            _made_hex.extend([h[i : i + 32] for i in range(0, 32 * _BATCH, 32)])
