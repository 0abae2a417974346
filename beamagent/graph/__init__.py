"""Graph workflows: instructions, routers, servings, jobs and the executor's pure decisions."""

from beamagent.graph.instructions import (
    MAX_ROUTE_COUNT,
    End,
    Instruction,
    Retry,
    Route,
    Sub,
    Yield,
    parse_next,
)
from beamagent.graph.job import Job, Node
from beamagent.graph.outputs import (
    Condition,
    ConditionOp,
    Output,
    OutputType,
    outputs_schema,
)
from beamagent.graph.planning import (
    DEFAULT_RETRY_REASON,
    Arrival,
    Join,
    JoinBarrier,
    Plan,
    PlanKind,
    plan,
)
from beamagent.graph.router import Edge, EdgeKind, EdgeRouter, LinearRouter, Router
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

__all__ = [
    "DEFAULT_RETRY_REASON",
    "MAX_ROUTE_COUNT",
    "Arrival",
    "Condition",
    "ConditionOp",
    "Edge",
    "EdgeKind",
    "EdgeRouter",
    "End",
    "FunctionServing",
    "Instruction",
    "Job",
    "Join",
    "JoinBarrier",
    "LinearRouter",
    "Node",
    "NodeMessage",
    "Output",
    "OutputType",
    "Plan",
    "PlanKind",
    "Result",
    "Retry",
    "Route",
    "Router",
    "Serving",
    "Sub",
    "ToolCall",
    "ToolRegistry",
    "ToolResult",
    "Yield",
    "outputs_schema",
    "parse_next",
    "parse_structured_answer",
    "plan",
]
