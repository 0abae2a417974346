"""The ``beamagent`` command, through typer's CliRunner, over stores a real runtime filled."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from beamagent import Runtime
from beamagent.cli import app
from beamagent.cli.app import EXIT_FAILED, EXIT_NOT_FOUND
from beamagent.graph import Job, LinearRouter, Node, NodeMessage, RunStatus

WAIT = 10.0

JOB_YAML = """\
job:
  id: review
  start: draft
  nodes:
    draft: {serving: writer, router: {order: [draft, check]}}
    check: {serving: reviewer, router: {order: [draft, check]}}
servings:
  writer: {text: "draft of {input}"}
  reviewer:
    prompt: "Review this: {input}"
    backend: local
    replies: ['{"body": "looks good", "outputs": {}, "next": [], "tool_calls": []}']
"""

# A chain whose middle node blocks until the test lets it go: stopping the
# runtime then interrupts the run, which `runs resume` continues.
CHAIN_PY = """\
from beamagent.graph import Job, LinearRouter, Node

order = LinearRouter(["a", "b"])
job = Job(
    "chain",
    [Node("a", serving=lambda m: "a done", router=order),
     Node("b", serving=lambda m: "b done", router=order)],
    start="a",
)
"""

runner = CliRunner()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with one local session (a question and its answer) and one completed run."""
    db = tmp_path / "sessions.db"
    with Runtime(store=db, handle_signals=False) as runtime:
        session = runtime.start_session(backend="local")
        list(session.stream("hello there"))
        runtime.stop_session(session.session_id)
        job = Job("one", [Node("only", serving=lambda m: f"got {m.input}")], start="only")
        runtime.run_job(job, "x", run_id="run_done").result(WAIT)
    return db


def invoke(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def test_help_lists_the_commands() -> None:
    code, out, _ = invoke("--help")
    assert code == 0
    for command in ("demo", "run", "sessions", "runs"):
        assert command in out


def test_sessions_list_show_messages(store: Path) -> None:
    code, out, _ = invoke("sessions", "list", "--store", str(store), "--json")
    assert code == 0
    (record,) = json.loads(out)
    session_id = record["session_id"]
    assert record["backend"] == "local"

    code, out, _ = invoke("sessions", "list", "--store", str(store))
    assert code == 0
    assert session_id in out

    code, out, _ = invoke("sessions", "show", session_id, "--store", str(store), "--json")
    assert code == 0
    assert json.loads(out)["session_id"] == session_id
    code, out, _ = invoke("sessions", "show", session_id, "--store", str(store))
    assert code == 0
    assert "local" in out

    code, out, _ = invoke("sessions", "messages", session_id, "--store", str(store), "--json")
    assert code == 0
    messages = json.loads(out)
    assert messages[0]["type"] == "user"
    assert messages[0]["content"] == "hello there"
    code, out, _ = invoke("sessions", "messages", session_id, "--store", str(store))
    assert code == 0
    assert "hello there" in out


def test_sessions_export_and_delete(store: Path, tmp_path: Path) -> None:
    (record,) = json.loads(invoke("sessions", "list", "--store", str(store), "--json")[1])
    session_id = record["session_id"]

    code, out, _ = invoke("sessions", "export", session_id, "--store", str(store))
    assert code == 0
    document = json.loads(out)
    assert document["session"]["session_id"] == session_id
    assert document["messages"][0]["content"] == "hello there"
    target = tmp_path / "export.json"
    code, _, err = invoke(
        "sessions", "export", session_id, "--store", str(store), "--output", str(target)
    )
    assert code == 0
    assert json.loads(target.read_text()) == document
    assert "exported" in err

    code, _, _ = invoke("sessions", "delete", session_id, "--store", str(store), input="n\n")
    assert code == 1  # declined: nothing deleted
    code, out, _ = invoke("sessions", "delete", session_id, "--store", str(store), "--yes")
    assert code == 0
    assert f"deleted session {session_id}" in out
    assert json.loads(invoke("sessions", "list", "--store", str(store), "--json")[1]) == []


@pytest.mark.parametrize(
    "command",
    [
        ("sessions", "show"),
        ("sessions", "messages"),
        ("sessions", "export"),
        ("sessions", "delete"),
        ("runs", "show"),
        ("runs", "delete"),
    ],
)
def test_an_unknown_id_is_a_message_and_exit_3(store: Path, command: tuple[str, str]) -> None:
    confirm = ["--yes"] if command[1] == "delete" else []
    code, out, err = invoke(*command, "nope", "--store", str(store), *confirm)
    assert code == EXIT_NOT_FOUND
    assert "nope" in err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("group", ["sessions", "runs"])
def test_a_missing_store_is_an_error_not_an_empty_list(tmp_path: Path, group: str) -> None:
    code, _, err = invoke(group, "list", "--store", str(tmp_path / "typo.db"))
    assert code == EXIT_FAILED
    assert "no store at" in err
    assert not (tmp_path / "typo.db").exists()


def test_runs_list_show_delete(store: Path) -> None:
    code, out, _ = invoke("runs", "list", "--store", str(store), "--json")
    assert code == 0
    (run,) = json.loads(out)
    assert (run["run_id"], run["job_id"], run["status"]) == ("run_done", "one", "completed")
    code, out, _ = invoke("runs", "list", "--store", str(store))
    assert "run_done" in out

    code, out, _ = invoke("runs", "show", "run_done", "--store", str(store), "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["results"][0]["result"]["body"] == "got x"
    code, out, _ = invoke("runs", "show", "run_done", "--store", str(store))
    assert code == 0
    assert "got x" in out

    code, out, _ = invoke("runs", "delete", "run_done", "--store", str(store), "-y")
    assert code == 0
    assert json.loads(invoke("runs", "list", "--store", str(store), "--json")[1]) == []


def test_run_a_yaml_job_live_and_as_json(tmp_path: Path) -> None:
    job_file = tmp_path / "review.yaml"
    job_file.write_text(JOB_YAML)
    db = str(tmp_path / "s.db")

    code, out, _ = invoke("run", str(job_file), "--input", "a release note", "--store", db)
    assert code == 0, out
    assert "draft of a release note" in out  # the progress table
    assert "ended: draft -> check" in out  # the linear router ends after its last node
    assert "looks good" in out

    code, out, _ = invoke("run", str(job_file), "-i", "notes", "--store", db, "--json")
    assert code == 0
    document = json.loads(out)
    assert document["status"] == "ended"
    assert document["path"] == ["draft", "check"]
    assert document["output"]["body"] == "looks good"
    assert document["events"][0]["kind"] == "run_started"
    assert document["events"][-1]["kind"] == "run_ended"


def test_run_a_json_job_file(tmp_path: Path) -> None:
    job_file = tmp_path / "echo.json"
    job_file.write_text(
        json.dumps(
            {
                "job": {
                    "id": "echo",
                    "starting_node_id": "say",  # Agens' spelling of start
                    "nodes": {"say": {"serving": "s"}},
                },
                "servings": {"s": {"text": "{node} says {input}"}},
            }
        )
    )
    code, out, _ = invoke(
        "run", str(job_file), "-i", "hi", "--store", str(tmp_path / "s.db"), "--json"
    )
    assert code == 0
    assert json.loads(out)["output"]["body"] == "say says hi"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", "{", "not valid JSON"),
        ("bad.yaml", "job: {id: x, start: a, nodes: {a: {serving: missing}}}", "unknown serving"),
        ("bad.py", "job = 3\n", "must define 'job'"),
        ("bad.txt", "", "ends in .json"),
    ],
)
def test_a_bad_job_file_is_a_message_and_exit_1(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    job_file = tmp_path / name
    job_file.write_text(text)
    code, out, err = invoke("run", str(job_file), "-i", "x", "--store", str(tmp_path / "s.db"))
    assert code == EXIT_FAILED
    assert message in err
    assert "Traceback" not in out + err


def test_a_run_that_fails_exits_1(tmp_path: Path) -> None:
    job_file = tmp_path / "fail.py"
    job_file.write_text(
        "from beamagent.graph import Job, Node\n"
        "def boom(message):\n    raise RuntimeError('kaput')\n"
        "job = Job('fail', [Node('n', serving=boom)], start='n', max_retries=0)\n"
    )
    code, out, err = invoke("run", str(job_file), "-i", "x", "--store", str(tmp_path / "s.db"))
    assert code == EXIT_FAILED
    assert "error" in out
    assert "kaput" in err


def test_a_run_that_outlives_its_timeout_is_interrupted_not_a_traceback(tmp_path: Path) -> None:
    job_file = tmp_path / "slow.py"
    job_file.write_text(
        "import threading\n"
        "from beamagent.graph import Job, Node\n"
        "def slow(message):\n    threading.Event().wait(1.0)\n    return 'late'\n"
        "job = Job('slow', [Node('n', serving=slow)], start='n')\n"
    )
    db = tmp_path / "s.db"
    code, out, err = invoke(
        "run", str(job_file), "-i", "x", "--store", str(db), "--timeout", "0.1", "--run-id", "r9"
    )
    assert code == EXIT_FAILED
    assert "did not end within 0.1 s" in err
    assert "beamagent runs resume r9" in err
    assert "Traceback" not in out + err
    code, out, _ = invoke("runs", "list", "--store", str(db), "--json")
    assert [(r["run_id"], r["status"]) for r in json.loads(out)] == [("r9", "interrupted")]


def test_runs_resume_continues_an_interrupted_run(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    gate, started = threading.Event(), threading.Event()

    def blocking(message: NodeMessage) -> str:
        started.set()
        gate.wait(WAIT)
        return "b never"

    order = LinearRouter(["a", "b"])
    job = Job(
        "chain",
        [
            Node("a", serving=lambda m: "a done", router=order),
            Node("b", serving=blocking, router=order),
        ],
        start="a",
    )
    with Runtime(store=db, handle_signals=False) as runtime:
        run = runtime.run_job(job, "go", run_id="r1")
        assert started.wait(WAIT)
    assert run.result(WAIT).status is RunStatus.INTERRUPTED
    gate.set()

    code, out, _ = invoke("runs", "list", "--store", str(db), "--status", "interrupted", "--json")
    assert [r["run_id"] for r in json.loads(out)] == ["r1"]
    job_file = tmp_path / "chain.py"
    job_file.write_text(CHAIN_PY)
    code, out, _ = invoke(
        "runs", "resume", "r1", "--job", str(job_file), "--store", str(db), "--json"
    )
    assert code == 0, out
    document = json.loads(out)
    assert document["path"] == ["a", "b"]
    assert document["output"]["body"] == "b done"
    code, _, err = invoke("runs", "resume", "r1", "--job", str(job_file), "--store", str(db))
    assert code == EXIT_FAILED  # it has ended now
    assert "only running or interrupted runs" in err
