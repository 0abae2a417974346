"""A runtime's local control socket: read-only introspection for ``beamagent top``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from beamagent._lazy import exports, load

if TYPE_CHECKING:
    from beamagent.control.client import ControlClient, check_socket_file
    from beamagent.control.server import ControlServer
    from beamagent.control.snapshot import PROTOCOL_VERSION, take_snapshot

__all__ = [
    "PROTOCOL_VERSION",
    "ControlClient",
    "ControlServer",
    "check_socket_file",
    "take_snapshot",
]

_EXPORTS = exports(
    {
        "beamagent.control.client": (
            "ControlClient",
            "check_socket_file",
        ),
        "beamagent.control.server": ("ControlServer",),
        "beamagent.control.snapshot": (
            "PROTOCOL_VERSION",
            "take_snapshot",
        ),
    }
)


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
