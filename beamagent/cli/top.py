"""``beamagent top``: a runtime's control-socket snapshot rendered with rich.

One frame is a tree of the supervision tree, a table of live sessions and a
table of live runs. :func:`render_snapshot` is pure (a snapshot dict in, a
rich renderable out), so what it shows is testable with a recording console.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

__all__ = ["render_snapshot"]


def _label(node: Mapping[str, Any]) -> Text:
    ident = f"{node['id']} " if node.get("id") is not None else ""
    text = Text(f"{ident}{node.get('class') or '-'}", style="bold")
    text.append(f"  {node.get('state')}")
    if node.get("restarts"):
        text.append(f"  restarts={node['restarts']}", style="yellow")
    if node.get("mailbox"):
        text.append(f"  mailbox={node['mailbox']}")
    return text


def _tree(node: Mapping[str, Any], branch: Tree | None = None) -> Tree:
    here = Tree(_label(node)) if branch is None else branch.add(_label(node))
    for child in node.get("children") or ():
        _tree(child, here)
    return here


def _sessions(rows: list[Mapping[str, Any]]) -> Table:
    table = Table(title=f"sessions ({len(rows)})", title_justify="left")
    for column in ("session", "backend", "state", "model", "incarnation", "restarts", "mailbox"):
        table.add_column(column, no_wrap=column == "session")
    for row in rows:
        table.add_row(
            str(row.get("session_id")),
            str(row.get("backend") or ""),
            str(row.get("state") or ""),
            str(row.get("model") or ""),
            str(row.get("incarnation") or ""),
            str(row.get("restarts", 0)),
            str(row.get("mailbox", 0)),
        )
    return table


def _runs(rows: list[Mapping[str, Any]]) -> Table:
    table = Table(title=f"runs ({len(rows)})", title_justify="left")
    for column in ("run", "job", "status", "current nodes", "events", "mailbox"):
        table.add_column(column, no_wrap=column == "run")
    for row in rows:
        current = ", ".join(
            f"{c['node']}" if c.get("thread") in (None, "0") else f"{c['node']}@{c['thread']}"
            for c in row.get("current") or ()
        )
        table.add_row(
            str(row.get("run_id")),
            str(row.get("job_id")),
            str(row.get("status")),
            current,
            str(row.get("events", 0)),
            str(row.get("mailbox", 0)),
        )
    return table


def render_snapshot(snapshot: Mapping[str, Any]) -> RenderableType:
    """One frame of ``beamagent top`` for a control-socket snapshot."""
    runtime = snapshot.get("runtime") or {}
    when = runtime.get("time")
    stamp = (
        datetime.datetime.fromtimestamp(when, tz=datetime.UTC).strftime("%H:%M:%S UTC")
        if isinstance(when, int | float)
        else ""
    )
    header = Text(f"runtime {runtime.get('id')}  pid {runtime.get('pid')}  {stamp}", style="bold")
    return Group(
        header,
        _tree(snapshot["tree"]),
        _sessions(list(snapshot.get("sessions") or ())),
        _runs(list(snapshot.get("runs") or ())),
    )
