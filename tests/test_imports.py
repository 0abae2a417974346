"""What importing beamagent imports: heavy, rarely needed modules load only when used.

Each check runs in a fresh interpreter and looks at ``sys.modules`` (behaviour, not
timing: the import-time figure is ``bench/backends.py``'s).
"""

from __future__ import annotations

import json

import pytest

import beamagent
from beamagent.graph.api import DEFAULT_MAX_TOOL_ROUNDS, RESUMABLE
from beamagent.graph.node import DEFAULT_MAX_TOOL_ROUNDS as NODE_DEFAULT_MAX_TOOL_ROUNDS
from beamagent.graph.run import RunStatus
from tests._child import run_script

#: Top-level packages no plain use of beamagent needs (extras, the CLI's libraries).
HEAVY_PACKAGES = (
    "mcp",
    "uvicorn",
    "starlette",
    "httpx",
    "pydantic",
    "ray",
    "psycopg",
    "psycopg_pool",
    "typer",
    "click",
    "rich",
    "pygments",
    "structlog",
    "yaml",
)
#: Modules of beamagent (or OpenTelemetry's) that load only when their feature is used.
HEAVY_MODULES = (
    "opentelemetry.trace",
    "beamagent.cli",
    "beamagent.cluster",
    "beamagent.control.server",
    "beamagent.graph.executor",
    "beamagent.tools._server",
)

REPORT = """
    import json, sys
    heavy_packages, heavy_modules = json.loads(sys.argv[1])
    loaded = sorted(
        name for name in sys.modules
        if name.split(".")[0] in heavy_packages
        or any(name == m or name.startswith(m + ".") for m in heavy_modules)
    )
    print(json.dumps(loaded))
"""


def loaded_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has loaded after running ``code``."""
    done = run_script(code + REPORT, json.dumps([HEAVY_PACKAGES, HEAVY_MODULES]))
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_import_beamagent_imports_nothing_heavy() -> None:
    code = """
    import sys
    import beamagent

    assert "beamagent.runtime" not in sys.modules
    """
    assert loaded_after(code) == []


def test_a_local_session_with_a_claude_backend_imported_loads_nothing_heavy() -> None:
    # What bench/backends.py times, then a local session started and queried.
    code = """
    from beamagent import Runtime
    import beamagent.backends.claude

    with Runtime(store=":memory:") as rt:
        session = rt.start_session(backend="local")
        assert session.query("hello")[-1].content == "hello"
    """
    assert loaded_after(code) == []


def test_heavy_modules_still_load_when_used() -> None:
    # The check above would pass if nothing were ever imported: this one would not.
    code = """
    from beamagent import configure_logging
    from beamagent.graph import GraphExecutor

    configure_logging("warning")
    """
    loaded = loaded_after(code)
    assert "structlog" in loaded
    assert "beamagent.graph.executor" in loaded


@pytest.mark.parametrize("name", beamagent.__all__)
def test_every_public_name_is_importable_and_listed(name: str) -> None:
    assert name in dir(beamagent)
    assert getattr(beamagent, name) is not None


def test_submodules_are_attributes_and_unknown_names_are_attribute_errors() -> None:
    code = """
    import beamagent

    assert beamagent.errors.StoreError.__name__ == "StoreError"
    assert beamagent.graph.Job.__name__ == "Job"
    assert not hasattr(beamagent, "no_such_name")
    try:
        from beamagent import no_such_name  # noqa: F401
    except ImportError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("imported a name that does not exist")
    print("ok")
    """
    done = run_script(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_graph_api_constants_agree_with_the_modules_it_does_not_import() -> None:
    assert DEFAULT_MAX_TOOL_ROUNDS == NODE_DEFAULT_MAX_TOOL_ROUNDS
    assert {RunStatus.RUNNING.value, RunStatus.INTERRUPTED.value} == RESUMABLE
