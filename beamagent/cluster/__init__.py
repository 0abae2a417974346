"""A cluster of runtimes on Ray: sessions placed by policy across nodes, failover with resume.

Needs the ``ray`` extra (``pip install 'beamagent[ray]'``); importing this package
without it raises :class:`~beamagent.errors.MissingDependency`. See ``docs/cluster.md``.

Example::

    from beamagent.cluster import ClusterRuntime

    with ClusterRuntime("127.0.0.1:6379", store="postgresql://beam@db/beam") as rt:
        session = rt.start_session(routing={"policy": "round_robin"})
        session.query("hello")
        session.session_info()["node"]  # the Ray node id it runs on
"""

from beamagent.cluster._ray import NAMESPACE, require_ray

require_ray()  # a clear MissingDependency now, not an obscure error later

from beamagent.cluster.controller import ClusterController  # noqa: E402
from beamagent.cluster.deploy import deploy, shutdown_cluster  # noqa: E402
from beamagent.cluster.node import NodeRuntime  # noqa: E402
from beamagent.cluster.placement import NodeView, Placement, place  # noqa: E402
from beamagent.cluster.runtime import ClusterRun, ClusterRuntime, ClusterSession  # noqa: E402

__all__ = [
    "NAMESPACE",
    "ClusterController",
    "ClusterRun",
    "ClusterRuntime",
    "ClusterSession",
    "NodeRuntime",
    "NodeView",
    "Placement",
    "deploy",
    "place",
    "shutdown_cluster",
]
