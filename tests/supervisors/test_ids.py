"""``supervisors._ids``: uuid4 strings and 128-bit hex ids made ahead in batches.

The uuid4 format, uniqueness across threads and a forked child's own batch are tested
through ``beamagent.messages._new_uuid`` (tests/messages/test_trusted.py).
"""

from __future__ import annotations

import os
import re
from collections import Counter

import pytest

from supervisors import _ids
from tests._fork import in_forked_child


def test_every_random_digit_takes_every_value_and_the_fixed_ones_stay() -> None:
    """All 122 random bits are random: each of the 31 free digits of an id takes all
    its values over a few thousand ids (a digit left from the batch's template, or
    copied from the wrong column, would not)."""
    ids = [_ids.new_uuid4() for _ in range(4000)]
    assert len(set(ids)) == len(ids)
    digits = [text.replace("-", "") for text in ids]
    for position in range(32):
        seen = Counter(d[position] for d in digits)
        if position == 12:
            assert set(seen) == {"4"}
        elif position == 16:  # the variant's two random bits
            assert set(seen) == set("89ab")
            assert min(seen.values()) > 4000 / 4 * 0.8
        else:
            assert set(seen) == set("0123456789abcdef"), position
            assert min(seen.values()) > 4000 / 16 * 0.6, position


def test_hex128_ids_are_32_random_hex_digits() -> None:
    ids = [_ids.new_hex128() for _ in range(2 * _ids._BATCH + 3)]  # across refills
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_hands_out_its_parents_hex_ids() -> None:
    _ids.new_hex128()  # made ahead in the parent now
    ahead = set(_ids._made_hex)
    got = in_forked_child(_ids.new_hex128)  # the child's next id
    assert len(got) == 32
    assert got not in ahead
