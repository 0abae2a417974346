"""Ray, imported lazily: names, connecting, and carrying typed errors across processes.

``import beamagent`` never imports Ray; :func:`require_ray` does, or raises
``MissingDependency`` naming the extra to install.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import sys
from types import ModuleType
from typing import Any, cast

from beamagent.errors import BeamAgentError, ClusterUnavailable, MissingDependency

__all__ = [
    "CONTROLLER_NAME",
    "NAMESPACE",
    "RemoteFailure",
    "actor_lost",
    "connect",
    "dumps",
    "keep_on_loopback",
    "loads",
    "node_actor_name",
    "require_ray",
    "unwrap",
]

NAMESPACE = "beamagent"
"""The Ray namespace of every beamagent actor (controller and node runtimes)."""
CONTROLLER_NAME = "beamagent:controller"


def node_actor_name(node_id: str) -> str:
    """The Ray actor name of the node runtime on ``node_id``."""
    return f"beamagent:node:{node_id}"


def require_ray() -> ModuleType:
    """The ``ray`` module.

    Raises:
        MissingDependency: Ray is not installed.
    """
    try:
        import ray
    except ImportError as exc:
        raise MissingDependency(
            "beamagent.cluster needs Ray: pip install 'beamagent[ray]'"
        ) from exc
    return cast(ModuleType, ray)


def _is_loopback(address: str | None) -> bool:
    if not address:
        return False
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def keep_on_loopback() -> None:
    """Make Ray connect to a loopback address as given, not via the interface address.

    Ray reads this when it resolves the address to connect to: set before Ray is
    imported, or on its constants module when it already was.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        setattr(constants, "ENABLE_RAY_CLUSTER", False)  # noqa: B010 (a private module)


def connect(address: str | None, namespace: str = NAMESPACE, **init_options: Any) -> bool:
    """Connect this process to the Ray cluster at ``address``; True if this call did.

    A loopback address keeps the driver on loopback: Ray otherwise resolves
    ``127.0.0.1`` to the machine's interface address before connecting, and a
    cluster bound to loopback never answers there (the driver hangs).

    Raises:
        ClusterUnavailable: Ray is connected to a different namespace.
    """
    if _is_loopback(address):
        keep_on_loopback()
    ray = require_ray()
    if ray.is_initialized():
        current = ray.get_runtime_context().namespace
        if current != namespace:
            raise ClusterUnavailable(
                f"this process is connected to Ray namespace {current!r}, not {namespace!r}; "
                f"connect with ray.init(namespace={namespace!r})"
            )
        return False
    options: dict[str, Any] = {"namespace": namespace, "log_to_driver": False}
    if _is_loopback(address):
        options["_node_ip_address"] = "127.0.0.1"
    options.update(init_options)
    ray.init(address=address, **options)
    return True


def actor_lost(ray: ModuleType, *more: type[BaseException]) -> tuple[type[BaseException], ...]:
    """The Ray errors that mean an actor (or its node) is gone or cannot come back there,
    plus ``more``."""
    exceptions = ray.exceptions
    return (exceptions.RayActorError, exceptions.ActorUnschedulableError, *more)


def dumps(value: Any) -> str:
    """``value`` as text (cloudpickle, base64), for the store's routing entries."""
    from ray import cloudpickle

    return base64.b64encode(cloudpickle.dumps(value)).decode("ascii")


def loads(text: str) -> Any:
    """The value :func:`dumps` wrote."""
    from ray import cloudpickle

    return cloudpickle.loads(base64.b64decode(text))


class RemoteFailure(Exception):
    """A beamagent error raised in another process, boxed so that it crosses Ray intact.

    Some error classes take several constructor arguments, which plain
    exception pickling loses; the box keeps class, args and attributes.
    """

    def __init__(self, box: tuple[type[BaseException], tuple[Any, ...], dict[str, Any]]) -> None:
        super().__init__(box)
        self.box = box

    @classmethod
    def of(cls, exc: BaseException) -> RemoteFailure:
        """Box ``exc``."""
        return cls((type(exc), exc.args, dict(vars(exc))))

    def error(self) -> BaseException:
        """The boxed error, rebuilt."""
        kind, args, attributes = self.box
        exc = kind.__new__(kind)
        exc.args = args
        vars(exc).update(attributes)
        return exc


def unwrap(exc: BaseException) -> BaseException | None:
    """The beamagent error inside a Ray task error, or None if it holds none."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, RemoteFailure):
        return cause.error()
    if isinstance(cause, BeamAgentError):
        return cause
    return None
