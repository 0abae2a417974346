"""The spans of a graph run, made from its events: one for the run, one per node visit.

A :class:`RunTracer` watches a run's :class:`~beamagent.graph.run.EventLog`
(the executor and the node actors' chains both write there, so every visit is
seen however it was served): ``beamagent.graph.run`` from ``run_job`` to the
terminal event, and a ``beamagent.graph.node`` child for each visit, from its
``node_started`` to its ``node_result``. A retry is an event on the visit's
span (the same span goes on), as are its tool calls. A sub-run gets a tracer of its own
(:meth:`RunTracer.sub`): its run span is a child of the visit that started it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from beamagent import telemetry
from beamagent.graph.run import TERMINAL_EVENTS, EventKind, RunEvent, RunResult

__all__ = ["RunTracer"]


class RunTracer:
    """Turns one run's events into spans. Thread-safe; made only when tracing is on.

    Example::

        tracer = RunTracer("run_1", "job", resumed=False)
        events = EventLog("run_1", tracer)
    """

    __slots__ = ("_context", "_lock", "_nodes", "_run", "_run_id")

    def __init__(self, run_id: str, job_id: str, *, resumed: bool, parent: Any = None) -> None:
        """Start the run's span, a child of ``parent`` (default: the caller's current span)."""
        self._lock = threading.Lock()
        self._run_id = run_id
        self._run = telemetry.start_span(
            "beamagent.graph.run",
            {"beamagent.run_id": run_id, "beamagent.job_id": job_id, "beamagent.resumed": resumed},
            parent=parent,
        )
        self._context = telemetry.context_of(self._run)
        # thread id -> (node id, span) of the visit it is on
        self._nodes: dict[str, tuple[str, telemetry.Span]] = {}

    def record(
        self,
        kind: EventKind,
        node_id: str | None,
        thread_id: str | None,
        step: int,
        data: Mapping[str, Any],
    ) -> None:
        """A non-terminal event of the run."""
        if thread_id is None or node_id is None:
            return
        with self._lock:
            current = self._nodes.get(thread_id)
            if kind is EventKind.NODE_STARTED:
                if current is not None and current[0] == node_id and data.get("retries"):
                    return  # the retried visit goes on in the same span
                if current is not None:
                    telemetry.end_span(current[1])
                self._nodes[thread_id] = (node_id, self._start_node(node_id, thread_id, step))
            elif kind is EventKind.NODE_RESULT:
                if current is not None and current[0] == node_id:
                    del self._nodes[thread_id]
                    telemetry.end_span(current[1])
            elif kind is EventKind.NODE_RETRY:
                span = current[1] if current is not None else self._run
                values = {"reason": data.get("reason"), "retries": data.get("retries")}
                telemetry.add_event(span, "retry", values)
                telemetry.set_attributes(span, {"beamagent.graph.retries": data.get("retries")})
            elif kind is EventKind.TOOL_CALL:
                span = current[1] if current is not None else self._run
                telemetry.add_event(
                    span, "tool_call", {"tool": data.get("tool"), "is_error": data.get("is_error")}
                )
            elif kind is EventKind.SUB_STARTED:
                span = current[1] if current is not None else self._run
                telemetry.add_event(
                    span,
                    "sub_started",
                    {"job_id": data.get("job_id"), "sub_run_id": data.get("sub_run_id")},
                )

    def context_for(self, thread_id: str) -> Any:
        """The context to serve ``thread_id``'s visit in: its node span is the parent."""
        with self._lock:
            current = self._nodes.get(thread_id)
            span = current[1] if current is not None else self._run
        return telemetry.context_of(span)

    def sub(self, run_id: str, job_id: str, thread_id: str) -> RunTracer:
        """The tracer of sub-run ``run_id``, started by ``thread_id``'s current visit."""
        tracer = RunTracer(run_id, job_id, resumed=False, parent=self.context_for(thread_id))
        telemetry.set_attributes(tracer._run, {"beamagent.parent_run_id": self._run_id})
        return tracer

    def _start_node(self, node_id: str, thread_id: str, step: int) -> telemetry.Span:
        return telemetry.start_span(
            "beamagent.graph.node",
            {
                "beamagent.run_id": self._run_id,
                "beamagent.node_id": node_id,
                "beamagent.thread_id": thread_id,
                "beamagent.graph.step": step,
            },
            parent=self._context,
        )

    def append(self, event: RunEvent, result: RunResult | None) -> None:
        """An event appended whole: the terminal one ends every span."""
        if event.kind not in TERMINAL_EVENTS:
            self.record(event.kind, event.node_id, event.thread_id, event.step, event.data)
            return
        status = result.status.value if result is not None else event.data.get("status")
        error = result.error if result is not None else None
        with self._lock:
            nodes, self._nodes = self._nodes, {}
            run, self._run = self._run, None
        for _node_id, span in nodes.values():
            telemetry.end_span(span, error=f"the run ended ({status}) during the visit")
        if run is not None:
            telemetry.end_span(
                run,
                {
                    "beamagent.run.status": status,
                    "beamagent.graph.steps": None if result is None else result.steps,
                },
                error=error if error is not None else (None if status != "error" else "error"),
            )

    def abandon(self, error: BaseException) -> None:
        """The run never started (``run_job`` failed): end its span with ``error``."""
        with self._lock:
            run, self._run = self._run, None
        telemetry.end_span(run, error=error)
