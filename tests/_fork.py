"""Run a function in a forked child of the test process and read back what it returned."""

from __future__ import annotations

import os
from collections.abc import Callable


def in_forked_child(make: Callable[[], str]) -> str:
    """``make()`` called in a child forked now (which leaves at once); its result here."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave, running none of the parent's exit code
        try:
            os.write(write, make().encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        return os.read(read, 1000).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
