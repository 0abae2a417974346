"""Without ``opentelemetry`` importable, everything works and nothing of it is imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys

    class Block:
        # As if opentelemetry-api were not installed.
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())

    from beamagent import Runtime, telemetry
    from beamagent.backends.local import LocalHandler
    from beamagent.graph import Job, Node, Result
    from beamagent.tools import ToolContext, tool
    from beamagent.tools._tool import invoke_blocking

    assert telemetry.ENABLED is False
    assert telemetry.current_context() is None
    assert telemetry.start_span("x") is None
    assert telemetry.tracing() is False
    with telemetry.span("x") as span:
        assert span is None

    @tool
    def add(a: int, b: int) -> int:
        "Add."
        return a + b

    backends = {"local_a": LocalHandler, "local_b": LocalHandler}
    with Runtime(store=":memory:", backends=backends) as rt:
        session = rt.start_session(routing={"preferred_backends": ["local_b"]})
        assert session.query("hello")[-1].content == "hello"
        assert [m.content for m in session.stream("again")][-1] == "again"
        job = Job("j", [Node("a", serving=lambda m: Result("done"))], start="a")
        assert rt.run_job(job, "x").result(10).output.body == "done"
    ctx = ToolContext(session_id="s", backend="local", tool_name="add")
    assert invoke_blocking(add, {"a": 1, "b": 2}, ctx).content == "3"
    loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
    assert not loaded, loaded
    print("ok")
    """
)


def test_everything_works_without_opentelemetry() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
