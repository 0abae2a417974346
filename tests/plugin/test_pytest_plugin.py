"""The pytest plugin as its users meet it: pytest run in a subprocess on a sample project.

The sample project uses every fixture and helper; some of its tests fail on purpose (a
helper's timeout, a leak) and the outer test checks how pytest reports them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from beamagent.testing import ensure_installed
from tests._clis import skip_without_clis

FAKE_CLAUDE = Path(__file__).parent.parent / "backends" / "fakes" / "fake_claude.py"

INI = """
[pytest]
beamagent_leak_grace = 0.5
timeout = 30
"""

SAMPLE = """
import socket
import sys
import threading
from pathlib import Path

import pytest

from beamagent import Runtime
from beamagent.errors import InvalidOption
from beamagent.graph import EventKind, Job, Node
from beamagent.testing import assert_restarted, crash, cut, kill_backend, wait_for_event

FAKE_CLAUDE = Path(__file__).parent / "fake_claude.py"


def test_scripted_local_session(local_backend):
    session = local_backend(replies=["hi there", ["thinking", "done"]])
    assert session.query("hello")[-1].content == "hi there"
    message = wait_for_event(session, lambda m: m.content == "done", query="again")
    assert message.type.value == "assistant"


def test_my_graph_offline(beamagent_runtime, local_backend):
    serving = local_backend.serving("Greet {input}", [{"body": "Hello, Ada!"}])
    job = Job("greet", [Node("greet", serving=serving)], start="greet")
    run = beamagent_runtime.run_job(job, "Ada")
    event = wait_for_event(run, lambda e: e.kind is EventKind.NODE_RESULT, timeout=5)
    assert event.data["body"] == "Hello, Ada!"
    assert run.result(5).output.body == "Hello, Ada!"


def test_the_runtime_stores_in_a_temp_sqlite_file(beamagent_runtime, local_backend):
    session = local_backend()
    session.query("remember me")
    stored = beamagent_runtime.get_session_messages(session.session_id)
    assert [m.content for m in stored if m.type.value == "user"] == ["remember me"]


def test_crash_is_restarted(local_backend):
    session = local_backend()
    before = crash(session)
    assert assert_restarted(session, within=5, after=before) == before + 1
    assert session.query("still here")[-1].content == "still here"


def test_cut_by_name_is_restarted(local_backend):
    session = local_backend()
    assert assert_restarted(session.session_id, after=cut(session.session_id)) == 2


def test_kill_backend_of_a_cli(beamagent_runtime):
    session = beamagent_runtime.start_session(
        backend="claude",
        cli_path=str(FAKE_CLAUDE),
        command_prefix=[sys.executable],
        env={"FAKE_MODE": "echo"},
    )
    old_pid = session.session_info()["pid"]
    assert assert_restarted(session, after=kill_backend(session)) == 2
    assert session.session_info()["pid"] != old_pid
    assert session.query("back")[-1].content == "echo: back"


def test_kill_backend_of_an_in_process_backend_says_what_to_do(local_backend):
    with pytest.raises(InvalidOption, match="use cut"):
        kill_backend(local_backend())


def test_fake_model_server(beamagent_runtime, fake_model_server):
    fake_model_server.reply = "from the fake model"
    session = beamagent_runtime.start_session(
        backend="openai", base_url=fake_model_server.url + "/v1", model="fake"
    )
    assert session.query("hi")[-1].content == "from the fake model"
    assert len(fake_model_server.model_requests()) == 1


def test_fails_wait_for_message_timeout(local_backend):
    gate = threading.Event()

    def slow(prompt, params):
        yield "first"
        gate.wait(10)
        yield "late"

    session = local_backend(reply=slow)
    try:
        wait_for_event(session, lambda m: m.content == "late", query="q", timeout=0.3)
    finally:
        gate.set()


def test_fails_wait_for_event_run_ended(beamagent_runtime):
    job = Job("one", [Node("one", serving=lambda m: "done")], start="one")
    wait_for_event(beamagent_runtime.run_job(job, "x"), lambda e: e.kind is EventKind.NODE_RETRY)


def test_fails_assert_restarted_timeout(local_backend):
    assert_restarted(local_backend(), within=0.3)


def test_leaks_a_thread(beamagent_runtime):
    stop = threading.Event()
    threading.Thread(target=stop.wait, args=(30,), name="forgotten-worker", daemon=True).start()


def test_leaks_a_runtime_with_a_session(beamagent_runtime):
    forgotten = Runtime(store=":memory:", handle_signals=False)
    forgotten.start_session(backend="local")


KEPT = []


def test_leaks_a_socket(beamagent_runtime):
    KEPT.append(socket.socket())


def test_after_the_leaks_all_is_clean(local_backend):
    assert local_backend().query("ok")[-1].content == "ok"
"""


def test_every_fixture_and_helper_in_a_user_project(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_user=SAMPLE)
    shutil.copy(FAKE_CLAUDE, pytester.path / "fake_claude.py")

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--tb=short", "-rfE")

    result.assert_outcomes(passed=12, failed=3, errors=3)  # a leaky test passes, then errs
    result.stdout.fnmatch_lines_random(
        [
            "*AssertionError: no matching event from query 1 of session session_* "
            "within 0.3 s; seen 2: system, assistant('first')",
            "*AssertionError: run run_* ended with no matching event; "
            "seen 4: run_started@one, node_started@one, node_result@one, run_complete",
            "*AssertionError: session session_* was not restarted after incarnation 1 "
            "within 0.3 s: saw incarnation 1 in state 'ready'",
            "*ERROR at teardown of test_leaks_a_thread*",
            "test leaked resources: threads still alive: ?'forgotten-worker'?",
            "*ERROR at teardown of test_leaks_a_runtime_with_a_session*",
            "test leaked resources: runtimes never stopped: ?'Runtime rt*'?",
            "*ERROR at teardown of test_leaks_a_socket*",
            "test leaked resources: file descriptors still open: ?'* -> socket:?*?'?",
        ]
    )
    for name in ("test_fails_wait_for_message_timeout", "test_fails_wait_for_event_run_ended"):
        result.stdout.fnmatch_lines([f"FAILED test_user.py::{name} - AssertionError*"])


def test_the_plugin_imports_nothing_of_beamagent_in_runs_that_do_not_use_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_plain="""
        import sys

        def test_plain(request):
            assert request.config.pluginmanager.has_plugin("beamagent")
            assert not [m for m in sys.modules if m.split(".")[0] == "beamagent"]
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


REAL_CLI = """
import os

from beamagent.testing import claude_env


def test_claude_answers(beamagent_runtime, fake_model_server, tmp_path):
    fake_model_server.reply = "4"
    session = beamagent_runtime.start_session(
        backend="claude",
        cli_path=os.environ["SAMPLE_CLAUDE"],
        env=claude_env(tmp_path / "home", fake_model_server),
        inherit_env=False,
        cwd=str(tmp_path),
    )
    assert session.query("What is 2 + 2?")[-1].content == "4"
    assert fake_model_server.model_requests()
"""


@pytest.mark.slow
@pytest.mark.timeout(900)  # ensure_installed may install the CLIs first
def test_a_user_test_of_the_real_claude_cli_against_the_fake_model(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        skip_without_clis("node and npm are needed to install and run the agent CLIs")
    monkeypatch.setenv("SAMPLE_CLAUDE", str(ensure_installed(("claude",))["claude"]))
    pytester.makeini(INI)
    pytester.makepyfile(test_real=REAL_CLI)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--tb=short")

    result.assert_outcomes(passed=1)


CASSETTES = """
import os
import sys
from pathlib import Path

import pytest

FAKE_CLAUDE = Path(__file__).parent / "fake_claude.py"
PROMPT = os.environ.get("SAMPLE_PROMPT", "hello")


def start(runtime, tmp_path):
    return runtime.start_session(
        backend="claude",
        cli_path=os.environ.get("SAMPLE_CLI", str(FAKE_CLAUDE)),
        command_prefix=[sys.executable],
        env={"FAKE_MODE": "echo"},
        cwd=str(tmp_path),
    )


@pytest.mark.beamagent_cassette("greeting")
def test_marked(beamagent_runtime, tmp_path):
    session = start(beamagent_runtime, tmp_path)
    assert session.query(PROMPT)[-1].content == "echo: hello"
    assert session.query("again")[-1].content == "echo: again"


def test_with_the_fixture(cassette, beamagent_runtime, tmp_path):
    assert cassette.path == Path(__file__).parent / "cassettes" / "test_with_the_fixture.jsonl"
    assert start(beamagent_runtime, tmp_path).query(PROMPT)[-1].content == "echo: hello"
"""


def test_cassettes_in_a_user_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_user=CASSETTES)
    shutil.copy(FAKE_CLAUDE, pytester.path / "fake_claude.py")
    args = ("-p", "no:cacheprovider", "--tb=short", "-rfE")

    # once (the default): nothing recorded yet, so the fake CLI runs and is recorded.
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=2)
    cassettes = pytester.path / "cassettes"
    assert sorted(p.name for p in cassettes.iterdir()) == [
        "greeting.jsonl",
        "test_with_the_fixture.jsonl",
    ]

    # Replayed with no CLI at all.
    monkeypatch.setenv("SAMPLE_CLI", str(pytester.path / "nowhere" / "claude"))
    replay = pytester.runpytest_subprocess(*args, "--beamagent-cassette-mode=replay")
    replay.assert_outcomes(passed=2)

    # A different prompt: the test fails, with the diff of the write.
    monkeypatch.setenv("SAMPLE_PROMPT", "goodbye")
    monkeypatch.setenv("BEAMAGENT_CASSETTE_MODE", "replay")
    changed = pytester.runpytest_subprocess(*args)
    changed.assert_outcomes(failed=2, errors=2)
    changed.stdout.fnmatch_lines_random(
        [
            "*ERROR at teardown of test_marked*",
            "cassette */cassettes/greeting.jsonl: session 1 made a different write (write 2);*",
            "--- recorded write",
            "+++ this replay's write",
            '-*"hello"*',
            '+*"goodbye"*',
        ]
    )


REAL_CLI_CASSETTE = """
import os

import pytest

from beamagent.testing import claude_env


@pytest.mark.beamagent_cassette("two_plus_two")
def test_claude_adds(beamagent_runtime, fake_model_server, tmp_path):
    fake_model_server.reply = "4"  # used when recording; a replay never calls it
    session = beamagent_runtime.start_session(
        backend="claude",
        cli_path=os.environ["SAMPLE_CLAUDE"],
        env=claude_env(tmp_path / "home", fake_model_server),
        inherit_env=False,
        cwd=str(tmp_path),
    )
    assert session.query("What is 2 + 2?")[-1].content == "4"
    assert bool(fake_model_server.model_requests()) is not bool(os.environ.get("REPLAYING"))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)  # ensure_installed may install the CLIs first
def test_the_documented_cassette_of_the_real_claude_cli(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        skip_without_clis("node and npm are needed to install and run the agent CLIs")
    monkeypatch.setenv("SAMPLE_CLAUDE", str(ensure_installed(("claude",))["claude"]))
    pytester.makeini(INI)
    pytester.makepyfile(test_real=REAL_CLI_CASSETTE)
    args = ("-p", "no:cacheprovider", "--tb=short")

    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
    assert (pytester.path / "cassettes" / "two_plus_two.jsonl").is_file()

    monkeypatch.setenv("SAMPLE_CLAUDE", str(pytester.path / "nowhere" / "claude"))
    monkeypatch.setenv("PATH", str(pytester.path / "empty-bin"))
    monkeypatch.setenv("REPLAYING", "1")
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
