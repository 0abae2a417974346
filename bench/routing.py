"""Routing cost against raw Pykka, measured in one run.

Prints:
  * ``select_backend`` through the registry actor (``Runtime.select_backend``:
    request, available backends, the ask, ``select``, the journal) vs one raw
    Pykka ask round trip to an echo actor (goal ratio <= 1.5);
  * the pure ``select`` call, against the same raw ask;
  * the registry vs a raw Pykka actor that runs the same ``select`` and keeps
    the state (the cost of our shell: ``Process``, journal, log call).

Every figure routes the same round-robin request (a ``RouteRequest`` built
once, as a service reuses its request) over three ``local`` backends. Logging
is filtered out, as in production at level WARNING; measurements alternate
(``paired``) because this machine runs other work meanwhile. Run pinned: run_all.py
runs it under ``taskset -c 0`` (one caller's latency across threads).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pykka

sys.path.insert(0, str(Path(__file__).resolve().parent))
# This checkout's beamagent, not the one the interpreter has installed (another worktree).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import paired, report

from beamagent import Runtime, configure_logging
from beamagent.backends.local import LocalHandler
from beamagent.routing.policies import RouteRequest, RoutingState, select

configure_logging("warning")

N = 5_000
BACKENDS = ("local_a", "local_b", "local_c")


class RawEcho(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


class RawRouter(pykka.ThreadingActor):
    """The least an actor can do to route: hold the state, call ``select``."""

    def __init__(self) -> None:
        super().__init__()
        self.state = RoutingState()

    def on_receive(self, message: Any) -> Any:
        request, available = message
        decision, self.state = select(request, self.state, available)
        return decision


def main() -> None:
    raw, raw_router = RawEcho.start(), RawRouter.start()
    try:
        with Runtime(store=":memory:", backends=dict.fromkeys(BACKENDS, LocalHandler)) as rt:
            for name in rt.backends():  # only our three: never a real CLI found on PATH
                if name not in BACKENDS:
                    rt.set_health(name, "down")
            request = RouteRequest(policy="round_robin")
            available = rt.available_backends()
            state = RoutingState()

            def pure() -> None:
                nonlocal state
                _, state = select(request, state, available)

            raw_t, registry_t = paired(lambda: raw.ask(1), lambda: rt.select_backend(request), N)
            report(
                "select_backend_registry",
                registry_t * 1e6,
                raw_t * 1e6,
                "us",
                "baseline: raw Pykka ask; goal ratio <= 1.5",
            )
            raw_t, pure_t = paired(lambda: raw.ask(1), pure, N)
            report(
                "select_pure", pure_t * 1e6, raw_t * 1e6, "us", "baseline: raw Pykka ask; no actor"
            )
            shell_t, registry_t = paired(
                lambda: raw_router.ask((request, available)),
                lambda: rt.select_backend(request),
                N,
            )
            report(
                "select_backend_registry_vs_raw_router",
                registry_t * 1e6,
                shell_t * 1e6,
                "us",
                "baseline: raw Pykka actor running select; the cost of our shell",
            )
    finally:
        raw.stop()
        raw_router.stop()


if __name__ == "__main__":
    main()
