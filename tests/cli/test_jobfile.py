"""Job files: JSON/YAML configs with their servings, and Python files exposing ``job``."""

from __future__ import annotations

from pathlib import Path

import pytest

from beamagent.cli.jobfile import job_from_config, load_job_file
from beamagent.errors import InvalidJob
from beamagent.graph import EdgeRouter, FunctionServing, NodeMessage, SessionServing


def test_an_agens_config_with_its_servings_loads() -> None:
    config = {
        "job": {
            "id": "triage",
            "starting_node_id": "classify",
            "outputs": [{"key": "intent", "type": "string"}],
            "nodes": {
                "classify": {
                    "serving": "classifier",
                    "agent_id": "a1",
                    "tools": [],
                    "router": {"edges": [{"type": "fallback", "to_id": "answer"}]},
                },
                "answer": {"serving": "answerer"},
            },
        },
        "servings": {
            "classifier": {
                "prompt": "Classify: {input}",
                "system": "You sort messages.",
                "backend": "local",
                "replies": ["{}"],
                "session_options": {"error_linger": 0},
            },
            "answerer": {"text": "answered {input} at {node}"},
        },
    }
    job = job_from_config(config)
    assert job.start == "classify"
    assert job.metadata["outputs"] == [{"key": "intent", "type": "string"}]
    assert job.node("classify").metadata["agent_id"] == "a1"
    assert isinstance(job.node("classify").serving, SessionServing)
    assert isinstance(job.node("classify").router, EdgeRouter)
    answer = job.node("answer").serving
    assert isinstance(answer, FunctionServing)
    message = NodeMessage(run_id="r", job_id="triage", node_id="answer", input="hi")
    assert answer.handle(message).body == "answered hi at answer"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([], "expected an object with 'job'"),
        ({"id": "j", "nodes": {}}, "holds a bare job .* under 'job'"),
        ({"job": {}, "servings": {}, "extra": 1}, "unknown keys extra"),
        ({"job": {}, "servings": []}, "'servings' must be an object"),
        ({"job": {}, "servings": {"s": "x"}}, "serving 's' must be an object"),
        ({"job": {}, "servings": {"s": {}}}, "needs 'text' or 'prompt'"),
        ({"job": {}, "servings": {"s": {"text": 1}}}, "a text serving has only 'text'"),
        ({"job": {}, "servings": {"s": {"prompt": "p", "model": "m"}}}, "unknown keys model"),
        ({"job": {"id": "j"}, "servings": {}}, "missing key"),
    ],
)
def test_a_bad_config_says_what_is_wrong(config: object, message: str) -> None:
    with pytest.raises(InvalidJob, match=message):
        job_from_config(config, where="f.yaml")


def test_a_python_job_file_exposes_job_subs_and_backends(tmp_path: Path) -> None:
    path = tmp_path / "job.py"
    path.write_text(
        "from beamagent.graph import Job, Node\n"
        "job = Job('j', [Node('n', serving=lambda m: 'ok')], start='n')\n"
        "subs = {'s': Job('s', [Node('m', serving=lambda m: 'sub')], start='m')}\n"
        "backends = {}\n"
    )
    loaded = load_job_file(path)
    assert loaded.job.id == "j"
    assert set(loaded.subs) == {"s"}
    assert loaded.backends == {}


def test_a_python_job_file_that_raises_is_an_invalid_job(tmp_path: Path) -> None:
    path = tmp_path / "job.py"
    path.write_text("raise ValueError('no')\n")
    with pytest.raises(InvalidJob, match="failed to load: ValueError: no"):
        load_job_file(path)


def test_a_missing_file_is_an_invalid_job(tmp_path: Path) -> None:
    with pytest.raises(InvalidJob, match="no job file"):
        load_job_file(tmp_path / "absent.yaml")
