"""A runtime's local control socket: read-only introspection for ``beamagent top``."""

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
