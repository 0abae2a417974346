"""How beamagent reads a ``timeout`` argument: seconds, or ``None`` for no limit.

Every public call that takes a timeout checks it here, so ``None`` means the
same thing everywhere (wait as long as it takes) and a bad value is an
``InvalidOption`` naming the argument, never a ``TypeError`` deep inside.
"""

from __future__ import annotations

import math
from typing import Any

from beamagent.errors import InvalidOption

__all__ = ["check_timeout"]


def check_timeout(value: Any, name: str = "timeout") -> float | None:
    """``value`` as seconds (``None``: no limit; ``math.inf`` is read as ``None``).

    >>> check_timeout(5), check_timeout(None), check_timeout(float("inf"))
    (5.0, None, None)

    Raises:
        InvalidOption: not ``None`` and not a number of seconds > 0 (a bool, a
            string, NaN, zero or a negative number).
    """
    if type(value) is float and 0.0 < value < math.inf:  # the common case, checked at once
        return value
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value == math.inf:
            return None
        if value > 0 and math.isfinite(value):
            return float(value)
    raise InvalidOption(
        f"{name} must be a number of seconds > 0, or None for no limit; got {value!r}"
    )
