"""Graph workflows: instructions, routers, servings, jobs, and the actors that run them.

``runtime.run_job(job, input)`` runs a :class:`Job` in a :class:`GraphExecutor`
actor and returns its :class:`Run`; ``docs/graphs.md`` is the user guide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from beamagent._lazy import exports, load

if TYPE_CHECKING:
    from beamagent.graph.executor import GraphExecutor
    from beamagent.graph.instructions import (
        MAX_ROUTE_COUNT,
        DroppedEntry,
        End,
        Instruction,
        Retry,
        Route,
        Sub,
        Yield,
        decode_next,
        parse_next,
    )
    from beamagent.graph.job import Job, Node
    from beamagent.graph.node import NodeActor, ServingContext, current_context
    from beamagent.graph.outputs import (
        Condition,
        ConditionOp,
        Output,
        OutputType,
        outputs_schema,
    )
    from beamagent.graph.planning import (
        DEFAULT_RETRY_REASON,
        TRANSIENT_ERRORS,
        Arrival,
        Join,
        JoinBarrier,
        Plan,
        PlanKind,
        is_retryable,
        plan,
    )
    from beamagent.graph.router import Edge, EdgeKind, EdgeRouter, LinearRouter, Router
    from beamagent.graph.run import (
        TERMINAL_EVENTS,
        EventKind,
        Run,
        RunEvent,
        RunResult,
        RunStatus,
        StepResult,
    )
    from beamagent.graph.serving import (
        FunctionServing,
        NodeMessage,
        Result,
        Serving,
        ToolCall,
        ToolRegistry,
        ToolResult,
        parse_structured_answer,
    )
    from beamagent.graph.session_serving import PROMPT_FIELDS, SessionServing

__all__ = [
    "DEFAULT_RETRY_REASON",
    "MAX_ROUTE_COUNT",
    "PROMPT_FIELDS",
    "TERMINAL_EVENTS",
    "TRANSIENT_ERRORS",
    "Arrival",
    "Condition",
    "ConditionOp",
    "DroppedEntry",
    "Edge",
    "EdgeKind",
    "EdgeRouter",
    "End",
    "EventKind",
    "FunctionServing",
    "GraphExecutor",
    "Instruction",
    "Job",
    "Join",
    "JoinBarrier",
    "LinearRouter",
    "Node",
    "NodeActor",
    "NodeMessage",
    "Output",
    "OutputType",
    "Plan",
    "PlanKind",
    "Result",
    "Retry",
    "Route",
    "Router",
    "Run",
    "RunEvent",
    "RunResult",
    "RunStatus",
    "Serving",
    "ServingContext",
    "SessionServing",
    "StepResult",
    "Sub",
    "ToolCall",
    "ToolRegistry",
    "ToolResult",
    "Yield",
    "current_context",
    "decode_next",
    "is_retryable",
    "outputs_schema",
    "parse_next",
    "parse_structured_answer",
    "plan",
]

_EXPORTS = exports(
    {
        "beamagent.graph.executor": ("GraphExecutor",),
        "beamagent.graph.instructions": (
            "MAX_ROUTE_COUNT",
            "DroppedEntry",
            "End",
            "Instruction",
            "Retry",
            "Route",
            "Sub",
            "Yield",
            "decode_next",
            "parse_next",
        ),
        "beamagent.graph.job": (
            "Job",
            "Node",
        ),
        "beamagent.graph.node": (
            "NodeActor",
            "ServingContext",
            "current_context",
        ),
        "beamagent.graph.outputs": (
            "Condition",
            "ConditionOp",
            "Output",
            "OutputType",
            "outputs_schema",
        ),
        "beamagent.graph.planning": (
            "DEFAULT_RETRY_REASON",
            "TRANSIENT_ERRORS",
            "Arrival",
            "Join",
            "JoinBarrier",
            "Plan",
            "PlanKind",
            "is_retryable",
            "plan",
        ),
        "beamagent.graph.router": (
            "Edge",
            "EdgeKind",
            "EdgeRouter",
            "LinearRouter",
            "Router",
        ),
        "beamagent.graph.run": (
            "TERMINAL_EVENTS",
            "EventKind",
            "Run",
            "RunEvent",
            "RunResult",
            "RunStatus",
            "StepResult",
        ),
        "beamagent.graph.serving": (
            "FunctionServing",
            "NodeMessage",
            "Result",
            "Serving",
            "ToolCall",
            "ToolRegistry",
            "ToolResult",
            "parse_structured_answer",
        ),
        "beamagent.graph.session_serving": (
            "PROMPT_FIELDS",
            "SessionServing",
        ),
    }
)


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
