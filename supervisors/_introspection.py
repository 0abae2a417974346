"""Walk a live supervision tree: the data behind ``beamagent top``."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pykka

from supervisors._process import ProcessTarget, lookup
from supervisors._supervisor import ChildInfo, _SupervisorCore

__all__ = ["format_tree", "tree"]


def _jsonable_id(value: Hashable) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def _describe(
    ref: pykka.ActorRef[Any] | None, child: ChildInfo | None, timeout: float
) -> dict[str, Any]:
    process = lookup(ref) if ref is not None else None
    node: dict[str, Any] = {
        "id": _jsonable_id(child.id) if child is not None else None,
        "class": ref.actor_class.__name__ if ref is not None else None,
        "urn": ref.actor_urn if ref is not None else None,
        "alive": process is not None,
        "state": process.process_state if process is not None else "stopped",
        "restarts": child.restarts if child is not None else 0,
        "mailbox": process.mailbox.qsize() if process is not None else 0,
        "children": [],
    }
    if child is not None:
        node["type"] = str(child.type)
        node["restart"] = str(child.restart)
    if isinstance(process, _SupervisorCore) and ref is not None:
        try:
            infos: list[ChildInfo] = ref.ask(  # type: ignore[assignment]
                pykka.messages.ProxyCall(("_api_which_children",), (), {}), timeout=timeout
            )
        except (pykka.ActorDeadError, pykka.Timeout):
            infos = []
        node["children"] = [_describe(info.ref, info, timeout) for info in infos]
    return node


def tree(target: ProcessTarget, *, timeout: float = 5.0) -> dict[str, Any]:
    """Describe the process ``target`` and, for supervisors, every descendant.

    Returns a JSON-serialisable dict: ``id, class, urn, alive, state,
    restarts, mailbox, children`` (plus ``type`` and ``restart`` for
    supervised children). Each supervisor is asked for its children with
    ``timeout``; one that does not answer in time is shown without children.
    """
    process = lookup(target)
    ref = process.actor_ref if process is not None else None
    return _describe(ref, None, timeout)


def format_tree(node: dict[str, Any]) -> str:
    """Render ``tree()`` output as indented text, one process per line."""
    lines: list[str] = []

    def label(n: dict[str, Any]) -> str:
        name = n["class"] or "-"
        ident = f"{n['id']} " if n["id"] is not None else ""
        urn = (n["urn"] or "")[-8:]
        parts = [f"{ident}{name}", n["state"]]
        if n["restarts"]:
            parts.append(f"restarts={n['restarts']}")
        if n["mailbox"]:
            parts.append(f"mailbox={n['mailbox']}")
        if urn:
            parts.append(f"…{urn}")
        return "  ".join(parts)

    def walk(n: dict[str, Any], prefix: str, last: bool, root: bool) -> None:
        if root:
            lines.append(label(n))
            child_prefix = ""
        else:
            lines.append(f"{prefix}{'└── ' if last else '├── '}{label(n)}")
            child_prefix = prefix + ("    " if last else "│   ")
        kids = n["children"]
        for i, kid in enumerate(kids):
            walk(kid, child_prefix, i == len(kids) - 1, False)

    walk(node, "", True, True)
    return "\n".join(lines)
