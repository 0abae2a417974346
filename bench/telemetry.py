"""What tracing costs on the local backend's query path, measured in one run.

Prints the median latency of one ``Session.query`` on the ``local`` backend
(in-memory store) in three set-ups, each in a fresh subprocess (whether
``opentelemetry`` is importable is decided at import):

  * ``absent``: ``opentelemetry`` not importable (beamagent's no-op), the baseline;
  * ``api_no_sdk``: the API installed, no provider configured (OpenTelemetry's own
    non-recording spans) -- what most users with the package get;
  * ``sdk_batch``: an SDK ``TracerProvider`` with a ``BatchSpanProcessor`` to an
    exporter that drops the spans (recording and export hand-off, no I/O).

Rounds alternate between the set-ups and keep each one's best, as ``paired`` does.
On a shared 2-core machine those three figures vary by several microseconds from
run to run, so it also prints what the instrumented points of one query cost by
themselves when no provider is set (the caller's context and the query span), in
this process, against an empty call.
Logging is filtered out, as in production at level WARNING. Run pinned: run_all.py
runs it under ``taskset -c 0`` (one caller's latency across threads).

Usage: ``python bench/telemetry.py [QUERIES_PER_ROUND]`` (default 2000).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# This checkout's beamagent, not whichever one is installed (a worktree, a clone).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import paired, report

ROUNDS = 3

CHILD = textwrap.dedent(
    """
    import sys, time, gc
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode == "absent":
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ModuleNotFoundError(name, name=name)
                return None
        sys.meta_path.insert(0, Block())
    elif mode == "sdk_batch":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
        from opentelemetry.sdk.trace.export import SpanExportResult

        class Drop(SpanExporter):
            def export(self, spans):
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop()))
        trace.set_tracer_provider(provider)
    from beamagent import Runtime, configure_logging, telemetry
    configure_logging("warning")
    assert telemetry.ENABLED is (mode != "absent")
    with Runtime(store=":memory:") as rt:
        session = rt.start_session(backend="local")
        for _ in range(500):
            session.query("hello world")
        best = float("inf")
        for _ in range(5):
            gc.collect()
            start = time.perf_counter()
            for _ in range(n):
                session.query("hello world")
            best = min(best, (time.perf_counter() - start) / n)
    print(best * 1e6)
    """
)


def measure(mode: str, n: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(done.stdout.strip().splitlines()[-1])


def noop_points() -> tuple[float, float]:
    """Seconds of one query's telemetry calls with the API but no provider; an empty call."""
    from beamagent import telemetry

    def points() -> None:
        context = telemetry.current_context()
        span = telemetry.start_span(
            "beamagent.query",
            {
                "beamagent.session_id": "session_0123456789abcdef",
                "beamagent.backend": "local",
                "beamagent.query_id": 1,
                "beamagent.incarnation": 1,
                "beamagent.prompt_chars": 11,
                "gen_ai.request.model": None,
            },
            parent=context,
        )
        telemetry.end_span(span)

    def empty() -> None:
        pass

    return paired(empty, points, 100_000)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    empty, points = noop_points()
    report(
        "otel_noop_points_per_query",
        points * 1e6,
        empty * 1e6,
        "us",
        "baseline: an empty Python call; API installed, no provider set",
    )
    best = {"absent": float("inf"), "api_no_sdk": float("inf"), "sdk_batch": float("inf")}
    for _ in range(ROUNDS):
        for mode in best:
            best[mode] = min(best[mode], measure(mode, n))
    baseline = best["absent"]
    report(
        "query_local_otel_api_no_sdk",
        best["api_no_sdk"],
        baseline,
        "us",
        "baseline: the same query without opentelemetry importable; goal ratio <= 1.05",
    )
    report(
        "query_local_otel_sdk_batch",
        best["sdk_batch"],
        baseline,
        "us",
        "baseline: the same query without opentelemetry importable; SDK, batch processor",
    )


if __name__ == "__main__":
    main()
