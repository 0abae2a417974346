"""The ``beamagent`` command: a typer app (typer parses the arguments, rich renders).

Exit codes: 0 done; 1 the command failed (a run did not complete, a bad job
file, a store error, a control socket refused as unsafe); 2 bad usage; 3 no
session or run with that id, or no runtime at that control socket.
"""

from __future__ import annotations

import datetime
import functools
import json
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from beamagent.cli.demo import run_demo
from beamagent.cli.jobfile import load_job_file
from beamagent.cli.text import message_text, short
from beamagent.cli.top import render_snapshot
from beamagent.control import ControlClient
from beamagent.errors import (
    BeamAgentError,
    ControlSocketUnavailable,
    RunError,
    RunNotFound,
    SessionNotFound,
    StoreError,
    ThreadNotFound,
)
from beamagent.graph import Run, RunResult, RunStatus
from beamagent.log import configure_logging
from beamagent.runtime import Runtime
from beamagent.store import migrate
from beamagent.store.postgres import is_postgres_url

__all__ = ["EXIT_FAILED", "EXIT_NOT_FOUND", "app", "main"]

EXIT_FAILED = 1
EXIT_NOT_FOUND = 3

app = typer.Typer(
    name="beamagent",
    help="Supervised LLM agent sessions and graph workflows: run jobs, look at the store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
sessions_app = typer.Typer(help="Sessions kept in the store.", no_args_is_help=True)
runs_app = typer.Typer(help="Graph runs kept in the store.", no_args_is_help=True)
store_app = typer.Typer(help="The session store itself.", no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")
app.add_typer(runs_app, name="runs")
app.add_typer(store_app, name="store")

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="The SQLite store file or a postgresql:// URL (default: $BEAMAGENT_STORE, "
        "else the user data dir).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]

P = ParamSpec("P")
R = TypeVar("R")


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _handled(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the library's expected errors into a message on stderr and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (SessionNotFound, RunNotFound, ThreadNotFound, ControlSocketUnavailable) as exc:
            _err().print(f"error: {exc}", markup=False)
            raise typer.Exit(EXIT_NOT_FOUND) from None
        except BeamAgentError as exc:
            _err().print(f"error: {exc}", markup=False)
            raise typer.Exit(EXIT_FAILED) from None

    return wrapper


@contextmanager
def _runtime(
    store: str | None, backends: Mapping[str, Any] | None = None, *, create: bool = False
) -> Iterator[Runtime]:
    """A runtime on ``store``; a ``--store`` that does not exist is an error unless ``create``.

    (Reading a mistyped path would otherwise make an empty store there and list nothing.)
    """
    if store is not None and not create and not is_postgres_url(store) and not Path(store).exists():
        raise StoreError(f"no store at {str(store)!r}; check --store (runs create it)")
    # The command's own output is the trace; the library's log stays quiet unless it is fatal.
    configure_logging("critical")
    with Runtime(store=store, backends=backends, handle_signals=False) as runtime:
        yield runtime


def _json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _when(timestamp: Any) -> str:
    if not isinstance(timestamp, int | float):
        return ""
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _id_column(table: Table, header: str, ids: list[str]) -> None:
    """Put a first column of ids that are never cut (they are what the other commands take)."""
    table.columns.insert(0, table.columns[0].copy())
    column = table.columns[0]
    column.header, column.no_wrap = header, True
    column.min_width = max([len(header), *map(len, ids)])


# --- demo and run -----------------------------------------------------------------------------


@app.command()
def demo() -> None:
    """Run the demo: a supervised, routed graph workflow with a crash healed by a restart."""
    raise typer.Exit(run_demo(_out()))


@app.command("run")
@_handled
def run_command(
    job_file: Annotated[
        Path, typer.Argument(help="A .json, .yaml/.yml or .py job file (see docs/cli.md).")
    ],
    input: Annotated[str, typer.Option("--input", "-i", help="The run's input.")],
    as_json: JsonOption = False,
    store: StoreOption = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="The run's id.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run.")] = 600.0,
) -> None:
    """Run a job on an input, showing its nodes' progress; exit 1 unless it completes or ends."""
    loaded = load_job_file(job_file)
    with _runtime(store, loaded.backends, create=True) as runtime:
        run = runtime.run_job(loaded.job, input, run_id, subs=loaded.subs)
        _finish(run, loaded.job.id, as_json=as_json, timeout=timeout)


def _finish(run: Run, job_id: str, *, as_json: bool, timeout: float) -> None:
    """Follow a run to its end, live (or silently for ``--json``), then report it."""
    try:
        _follow(run, job_id, as_json=as_json, timeout=timeout)
    except TimeoutError:
        raise RunError(
            f"run {run.run_id!r} did not end within {timeout:g} s; it is kept in the store as "
            f"interrupted: continue it with 'beamagent runs resume {run.run_id} --job FILE'"
        ) from None


def _follow(run: Run, job_id: str, *, as_json: bool, timeout: float) -> None:
    if as_json:
        events = [event.to_dict() for event in run.events(timeout=timeout)]
        result = run.result(timeout, raise_error=False)
        _json({**_result_dict(result, job_id), "events": events})
    else:
        progress = RunProgress(job_id, run.run_id)
        with Live(progress.table(), console=_out(), auto_refresh=False) as live:
            for event in run.events(timeout=timeout):
                progress.update(event)
                live.update(progress.table(), refresh=True)
        result = run.result(timeout, raise_error=False)
        summary = _result_dict(result, job_id)
        out = _out()
        out.print()
        out.print(f"{summary['status']}: {' -> '.join(summary['path'])}", markup=False)
        if result.output is not None:
            out.print(result.output.body, markup=False)
        if result.error is not None:
            _err().print(f"error: {result.error}", markup=False)
    if result.status not in (RunStatus.COMPLETED, RunStatus.ENDED):
        raise typer.Exit(EXIT_FAILED)


def _result_dict(result: RunResult, job_id: str) -> dict[str, Any]:
    return {
        "run_id": result.run_id,
        "job_id": job_id,
        "status": result.status.value,
        "steps": result.steps,
        "path": [step.node_id for step in result.results],
        "output": None if result.output is None else result.output.to_dict(),
        "error": None if result.error is None else str(result.error),
    }


class RunProgress:
    """The live table of ``beamagent run``: one row per node visit (node and thread)."""

    def __init__(self, job_id: str, run_id: str) -> None:
        self.title = f"{job_id} · {run_id}"
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.status = "running"

    def update(self, event: Any) -> None:
        if event.terminal:
            self.status = str(event.data.get("status", event.kind.value))
            return
        if event.node_id is None:
            return
        row = self.rows.setdefault(
            (event.node_id, event.thread_id or "0"), {"state": "", "visits": 0, "detail": ""}
        )
        kind = event.kind.value
        if kind == "node_started":
            row["state"], row["visits"] = "running", row["visits"] + 1
        elif kind == "node_result":
            row["state"], row["detail"] = "done", event.data.get("body")
        elif kind == "node_retry":
            row["state"], row["detail"] = "retrying", event.data.get("reason")
        elif kind == "tool_call":
            row["detail"] = f"tool {event.data.get('tool')}"

    def table(self) -> Table:
        table = Table(title=f"{self.title} · {self.status}", title_justify="left")
        for column in ("node", "thread", "state", "visits", "detail"):
            table.add_column(column)
        for (node, thread), row in self.rows.items():
            table.add_row(node, thread, row["state"], str(row["visits"]), short(row["detail"]))
        return table


# --- top --------------------------------------------------------------------------------------


@app.command()
@_handled
def top(
    socket_path: Annotated[
        Path,
        typer.Option(
            "--socket", help="The runtime's control socket (Runtime(control_socket=...))."
        ),
    ],
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print snapshots as JSON (one per line when live).")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between refreshes.")
    ] = 1.0,
) -> None:
    """A live view of a running runtime: its supervision tree, sessions and runs."""
    with ControlClient(socket_path) as client:
        if once:
            snapshot = client.snapshot()
            if as_json:
                _json(snapshot)
            else:
                _out().print(render_snapshot(snapshot))
            return
        stop = threading.Event()
        try:
            if as_json:
                while True:
                    sys.stdout.write(json.dumps(client.snapshot(), default=str) + "\n")
                    sys.stdout.flush()
                    stop.wait(interval)
            with Live(
                render_snapshot(client.snapshot()), console=_out(), auto_refresh=False
            ) as live:
                while not stop.wait(interval):
                    live.update(render_snapshot(client.snapshot()), refresh=True)
        except KeyboardInterrupt:
            return


# --- sessions ---------------------------------------------------------------------------------


@sessions_app.command("list")
@_handled
def sessions_list(
    store: StoreOption = None,
    as_json: JsonOption = False,
    backend: Annotated[str | None, typer.Option(help="Only this backend's sessions.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many.")] = None,
) -> None:
    """The stored sessions, most recently updated first."""
    with _runtime(store) as runtime:
        records = runtime.list_sessions(backend=backend, limit=limit)
    if as_json:
        _json([record.to_dict() for record in records])
        return
    table = Table("backend", "model", "messages", "updated")
    _id_column(table, "session", [record.session_id for record in records])
    for record in records:
        table.add_row(
            record.session_id,
            record.backend,
            record.model or "",
            str(record.message_count),
            _when(record.updated_at),
        )
    _out().print(table)


@sessions_app.command("show")
@_handled
def sessions_show(session_id: str, store: StoreOption = None, as_json: JsonOption = False) -> None:
    """A session's stored metadata."""
    with _runtime(store) as runtime:
        record = runtime.get_session(session_id).to_dict()
    if as_json:
        _json(record)
        return
    table = Table("field", "value", show_header=False)
    for key, value in record.items():
        shown = _when(value) if key.endswith("_at") else short(value, 100)
        table.add_row(key, shown)
    _out().print(table)


@sessions_app.command("messages")
@_handled
def sessions_messages(
    session_id: str,
    store: StoreOption = None,
    as_json: JsonOption = False,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many.")] = None,
) -> None:
    """A session's messages, in order."""
    with _runtime(store) as runtime:
        messages = runtime.get_session_messages(session_id, limit=limit)
    if as_json:
        _json([message.to_dict() for message in messages])
        return
    table = Table("#", "type", "content")
    for index, message in enumerate(messages):
        table.add_row(str(index), message.type.value, short(message_text(message), 100))
    _out().print(table)


@sessions_app.command("export")
@_handled
def sessions_export(
    session_id: str,
    store: StoreOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """A session as one JSON document: its metadata and every message (hidden ones too)."""
    with _runtime(store) as runtime:
        record = runtime.get_session(session_id)
        messages = runtime.get_session_messages(session_id, include_hidden=True)
    document = {
        "session": record.to_dict(),
        "messages": [message.to_dict() for message in messages],
    }
    if output is None:
        _json(document)
    else:
        output.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
        _err().print(f"exported {len(messages)} messages to {output}", markup=False)


@sessions_app.command("delete")
@_handled
def sessions_delete(session_id: str, store: StoreOption = None, yes: YesOption = False) -> None:
    """Delete a session's history, messages and threads."""
    with _runtime(store) as runtime:
        runtime.get_session(session_id)  # unknown → exit 3 before asking
        if not yes:
            typer.confirm(f"delete session {session_id}?", abort=True)
        runtime.delete_session(session_id)
    _out().print(f"deleted session {session_id}", markup=False)


# --- runs -------------------------------------------------------------------------------------


@runs_app.command("list")
@_handled
def runs_list(
    store: StoreOption = None,
    as_json: JsonOption = False,
    status: Annotated[
        str | None, typer.Option(help="Only runs in this status (e.g. interrupted).")
    ] = None,
    job: Annotated[str | None, typer.Option(help="Only this job's runs.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many.")] = None,
) -> None:
    """The stored runs, most recently updated first."""
    with _runtime(store) as runtime:
        runs = runtime.list_runs(status=status, job_id=job, limit=limit)
    if as_json:
        _json(runs)
        return
    table = Table("job", "status", "updated")
    _id_column(table, "run", [run["run_id"] for run in runs])
    for run in runs:
        table.add_row(run["run_id"], run["job_id"], run["status"], _when(run["updated_at"]))
    _out().print(table)


@runs_app.command("show")
@_handled
def runs_show(run_id: str, store: StoreOption = None, as_json: JsonOption = False) -> None:
    """A stored run: its status and the result of each node visit."""
    with _runtime(store) as runtime:
        record = runtime.load_run(run_id)
    if as_json:
        _json(record)
        return
    out = _out()
    out.print(
        f"{record['run_id']}  job {record['job_id']}  {record['status']}  "
        f"updated {_when(record['updated_at'])}",
        markup=False,
    )
    table = Table("step", "node", "thread", "body")
    for result in record.get("results") or ():
        if isinstance(result, Mapping):
            body = (result.get("result") or {}).get("body")
            table.add_row(
                str(result.get("step", "")),
                str(result.get("node", "")),
                str(result.get("thread", "")),
                short(body, 80),
            )
    out.print(table)


@runs_app.command("resume")
@_handled
def runs_resume(
    run_id: str,
    job_file: Annotated[Path, typer.Option("--job", help="The job file the run was started from.")],
    store: StoreOption = None,
    as_json: JsonOption = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run.")] = 600.0,
) -> None:
    """Continue an interrupted run (its job is read again from its job file)."""
    loaded = load_job_file(job_file)
    with _runtime(store, loaded.backends) as runtime:
        run = runtime.resume_run(run_id, loaded.job, subs=loaded.subs)
        _finish(run, loaded.job.id, as_json=as_json, timeout=timeout)


@runs_app.command("delete")
@_handled
def runs_delete(run_id: str, store: StoreOption = None, yes: YesOption = False) -> None:
    """Delete a stored run's checkpoint and results."""
    with _runtime(store) as runtime:
        runtime.load_run(run_id)  # unknown → exit 3 before asking
        if not yes:
            typer.confirm(f"delete run {run_id}?", abort=True)
        runtime.delete_run(run_id)
    _out().print(f"deleted run {run_id}", markup=False)


# --- the store ----------------------------------------------------------------------------


@store_app.command("migrate")
@_handled
def store_migrate(
    source: Annotated[str, typer.Argument(help="The store to copy: a SQLite file or a URL.")],
    target: Annotated[
        str, typer.Argument(help="The empty store to fill: a postgresql:// URL or a file.")
    ],
    as_json: JsonOption = False,
) -> None:
    """Copy every session, message, thread, run and routing entry into an empty store.

    For example ``beamagent store migrate ~/.local/share/beamagent/sessions.db
    postgresql://me@db/beamagent``. The target is written in one transaction; one that
    is not empty is refused.
    """
    if not is_postgres_url(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise StoreError(f"no store at {str(path)!r} to migrate from")
        source = str(path)
    if not is_postgres_url(target):
        target = str(Path(target).expanduser())
    configure_logging("critical")
    report = migrate(source, target)
    if as_json:
        _json(report.to_dict())
        return
    counts = ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in report.to_dict().items())
    _out().print(f"migrated {counts}", markup=False)


def main() -> None:
    """The console script's entry point (also ``python -m beamagent``)."""
    app(prog_name="beamagent")
