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

__all__ = ["render_cluster_snapshot", "render_snapshot"]


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


def _short(node: Any) -> str:
    """A Ray node id's first 12 hex digits (enough to tell nodes apart)."""
    return "" if node is None else str(node)[:12]


def _sessions(rows: list[Mapping[str, Any]]) -> Table:
    table = Table(title=f"sessions ({len(rows)})", title_justify="left")
    on_nodes = any(row.get("node") for row in rows)
    columns = ("session", "backend", "state", "model", "incarnation", "restarts", "mailbox")
    for column in ("node", *columns) if on_nodes else columns:
        table.add_column(column, no_wrap=column in ("session", "node"))
    for row in rows:
        table.add_row(
            *((_short(row.get("node")),) if on_nodes else ()),
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
    on_nodes = any(row.get("node") for row in rows)
    columns = ("run", "job", "status", "current nodes", "events", "mailbox")
    for column in ("cluster node", *columns) if on_nodes else columns:
        table.add_column(column, no_wrap=column == "run")
    for row in rows:
        current = ", ".join(
            f"{c['node']}" if c.get("thread") in (None, "0") else f"{c['node']}@{c['thread']}"
            for c in row.get("current") or ()
        )
        table.add_row(
            *((_short(row.get("node")),) if on_nodes else ()),
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


def _nodes(rows: list[Mapping[str, Any]]) -> Table:
    table = Table(title=f"nodes ({len(rows)})", title_justify="left")
    for column in ("node", "alive", "health", "sessions", "runs", "backends", "incarnation"):
        table.add_column(column, no_wrap=column == "node")
    for row in rows:
        unwell = row.get("backend_health") or {}
        backends = ", ".join(
            f"{b} ({unwell[b]})" if b in unwell else str(b) for b in row.get("backends") or ()
        )
        table.add_row(
            _short(row.get("node")),
            "yes" if row.get("alive") else "no",
            str(row.get("health") or ""),
            str(row.get("sessions", 0)),
            str(row.get("runs", 0)),
            backends,
            str(row.get("incarnation") or "")[:8],
        )
    return table


def _decisions(rows: list[Mapping[str, Any]]) -> Table:
    table = Table(title=f"placements (newest {len(rows)})", title_justify="left")
    for column in ("at", "session", "node", "backend", "policy", "outcome"):
        table.add_column(column, no_wrap=column == "session")
    for row in rows:
        at = row.get("at")
        table.add_row(
            datetime.datetime.fromtimestamp(at, tz=datetime.UTC).strftime("%H:%M:%S")
            if isinstance(at, int | float)
            else "",
            str(row.get("session_id") or ""),
            _short(row.get("node")),
            str(row.get("backend") or ""),
            str(row.get("policy") or ""),
            "ok" if row.get("ok") else f"{row.get('error')}: {row.get('message')}",
        )
    return table


def render_cluster_snapshot(snapshot: Mapping[str, Any]) -> RenderableType:
    """One frame of ``beamagent top --cluster``: nodes, sessions and runs by node, placements."""
    cluster = snapshot.get("cluster") or {}
    when = cluster.get("time")
    stamp = (
        datetime.datetime.fromtimestamp(when, tz=datetime.UTC).strftime("%H:%M:%S UTC")
        if isinstance(when, int | float)
        else ""
    )
    header = Text(f"cluster {cluster.get('address') or ''}  {stamp}", style="bold")
    return Group(
        header,
        _nodes(list(snapshot.get("nodes") or ())),
        _sessions(list(snapshot.get("sessions") or ())),
        _runs(list(snapshot.get("runs") or ())),
        _decisions(list(snapshot.get("decisions") or ())),
    )
