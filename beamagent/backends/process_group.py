"""A backend's process group: the CLI and everything it spawned, signalled as one.

A CLI backend runs in a session of its own (``start_new_session=True``), so
its pid is also the id of a process group holding every process it spawns:
the native binary behind an npm launcher, tool commands, MCP servers. Killing
only the launched pid leaves those running (and holding its stdout open);
signalling the group does not. A process that leaves the group on purpose
(``setsid``) is out of reach, as it is for a terminal's job control.

Membership is read from ``/proc`` on Linux, so that zombies (exited, waiting
for a parent to reap them) do not count as alive; elsewhere a group is alive
while ``killpg(pgid, 0)`` finds it.

:func:`terminate_group` blocks its caller; :func:`terminate_group_async` does
the same on an asyncio loop (the shared I/O loop ends groups that way, so a
group that takes seconds to die holds up no other session).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Final

__all__ = [
    "group_alive",
    "signal_group",
    "terminate_group",
    "terminate_group_async",
    "wait_group_gone",
    "wait_group_gone_async",
]

_PROC: Final = "/proc"
_FIRST_POLL: Final = 0.001
_MAX_POLL: Final = 0.05


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to every process of group ``pgid``; False if the group is gone.

    A group we may not signal (``EPERM``: not ours) counts as gone.
    """
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Whether group ``pgid`` still has a process that is not a zombie."""
    if not signal_group(pgid, 0):
        return False  # no member at all, not even a zombie: the common, cheap case
    try:
        entries = os.listdir(_PROC)
    except OSError:
        return True  # no /proc: a zombie cannot be told from a live process
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"{_PROC}/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # it ended meanwhile
        # After the parenthesised command name (which may contain anything): state, ppid, pgrp.
        fields = stat[stat.rfind(b")") + 2 :].split(maxsplit=3)
        if len(fields) > 2 and fields[0] != b"Z" and fields[2] == str(pgid).encode():
            return True
    return False


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for group ``pgid`` to have no live process.

    Returns whether it is gone. The members are not our children (only the
    leader is), so there is nothing to block on: this polls, 1 ms at first,
    backing off to 50 ms.
    """
    deadline = time.monotonic() + timeout
    delay = _FIRST_POLL
    while group_alive(pgid):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, _MAX_POLL)
    return True


def terminate_group(pgid: int, timeout: float) -> bool:
    """End every process of group ``pgid``: SIGTERM, then SIGKILL what is left after ``timeout``.

    Returns whether the group is gone (False only if a process survived
    SIGKILL for ``timeout`` seconds, e.g. stuck in the kernel). The group's
    leader, if it is our child, is left as a zombie for its ``wait()``: while
    unreaped it keeps ``pgid`` from naming another group.
    """
    if not signal_group(pgid, signal.SIGTERM):
        return True
    if wait_group_gone(pgid, timeout):
        return True
    signal_group(pgid, signal.SIGKILL)
    return wait_group_gone(pgid, timeout)


async def wait_group_gone_async(pgid: int, timeout: float) -> bool:
    """:func:`wait_group_gone` for an asyncio loop: polls without blocking the loop."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = _FIRST_POLL
    while group_alive(pgid):
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, _MAX_POLL)
    return True


async def terminate_group_async(pgid: int, timeout: float) -> bool:
    """:func:`terminate_group` for an asyncio loop: SIGTERM, then SIGKILL after ``timeout``."""
    if not signal_group(pgid, signal.SIGTERM):
        return True
    if await wait_group_gone_async(pgid, timeout):
        return True
    signal_group(pgid, signal.SIGKILL)
    return await wait_group_gone_async(pgid, timeout)
