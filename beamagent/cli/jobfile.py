"""Job files for ``beamagent run``: JSON, YAML or a Python file exposing ``job``.

A JSON or YAML job file is an object with the job and the servings its nodes name::

    job:                      # Job.from_dict's form; Agens 0.2 job configs load unchanged
      id: review
      start: draft
      nodes:
        draft: {serving: writer, router: {order: [check]}}
        check: {serving: reviewer}
    servings:
      writer: {text: "draft of {input}"}                # no model: the text, formatted
      reviewer:                                         # a prompt run on a session
        prompt: "Review this: {input}"
        backend: local                                  # or routing: {policy: ...}
        replies: ['{"body": "looks good"}']             # the local backend's scripted replies

A serving with ``text`` answers with the text (``{input}`` and ``{node}`` are
filled in). One with ``prompt`` is a :class:`~beamagent.graph.SessionServing`;
its optional keys are ``system``, ``backend``, ``routing``, ``session_options``,
``timeout`` and ``replies`` (short for ``session_options.replies``).

A Python job file is run as a script and must define ``job`` (a
:class:`~beamagent.graph.Job`); it may define ``subs`` (sub-jobs by id) and
``backends`` (the runtime's ``backends=``).
"""

from __future__ import annotations

import json
import runpy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from beamagent.errors import InvalidJob
from beamagent.graph import FunctionServing, Job, NodeMessage, Serving, SessionServing

__all__ = ["JobFile", "load_job_file"]

_FILE_KEYS = frozenset({"job", "servings"})
_PROMPT_KEYS = frozenset(
    {"prompt", "system", "backend", "routing", "session_options", "timeout", "replies"}
)


@attrs.frozen
class JobFile:
    """What a job file defines: the job, its sub-jobs and the runtime's extra backends."""

    job: Job
    subs: Mapping[str, Job] = attrs.field(factory=dict)
    backends: Mapping[str, Any] | None = None


def load_job_file(path: Path) -> JobFile:
    """Read a ``.json``, ``.yaml``/``.yml`` or ``.py`` job file.

    Raises:
        InvalidJob: the file is missing, unreadable or does not define a valid job.
    """
    if not path.is_file():
        raise InvalidJob(f"no job file {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".py":
        return _load_python(path)
    if suffix not in (".json", ".yaml", ".yml"):
        raise InvalidJob(f"{path.name}: a job file ends in .json, .yaml, .yml or .py")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidJob(f"{path.name} is not valid {suffix[1:].upper()}: {exc}") from None
    return JobFile(job=job_from_config(data, where=path.name))


def job_from_config(data: Any, *, where: str = "job file") -> Job:
    """Build the job of a JSON/YAML job file's content (see the module docstring)."""
    if isinstance(data, Mapping) and "job" not in data and "nodes" in data:
        raise InvalidJob(
            f"{where} holds a bare job (an Agens config?): put it under 'job' and define the "
            "servings its nodes name under 'servings' (see docs/cli.md)"
        )
    if not isinstance(data, Mapping) or "job" not in data:
        raise InvalidJob(f"{where}: expected an object with 'job' and 'servings'")
    unknown = set(data) - _FILE_KEYS
    if unknown:
        raise InvalidJob(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    raw_servings = data.get("servings")
    if raw_servings is None:
        raw_servings = {}
    if not isinstance(raw_servings, Mapping):
        raise InvalidJob(f"{where}: 'servings' must be an object of name to serving")
    servings = {
        str(name): _serving(f"{where}: serving {name!r}", spec)
        for name, spec in raw_servings.items()
    }
    try:
        return Job.from_dict(data["job"], servings)
    except InvalidJob as exc:
        raise InvalidJob(f"{where}: {exc}") from None


def _serving(where: str, spec: Any) -> Serving:
    if not isinstance(spec, Mapping):
        raise InvalidJob(f"{where} must be an object with 'text' or 'prompt'")
    if "text" in spec:
        if set(spec) != {"text"} or not isinstance(spec["text"], str):
            raise InvalidJob(f"{where}: a text serving has only 'text', a string")
        return FunctionServing(_TextServing(spec["text"]))
    if "prompt" not in spec:
        raise InvalidJob(f"{where} needs 'text' or 'prompt'")
    unknown = set(spec) - _PROMPT_KEYS
    if unknown:
        raise InvalidJob(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    options = {key: spec[key] for key in ("system", "backend", "routing", "timeout") if key in spec}
    session_options = dict(spec.get("session_options") or {})
    if "replies" in spec:
        session_options["replies"] = list(spec["replies"])
    if session_options:
        options["session_options"] = session_options
    try:
        return SessionServing(spec["prompt"], **options)
    except (TypeError, ValueError) as exc:
        raise InvalidJob(f"{where}: {exc}") from None


@attrs.frozen
class _TextServing:
    """A serving function that answers with a fixed text (``{input}``, ``{node}`` filled in)."""

    text: str

    def __call__(self, message: NodeMessage) -> str:
        return self.text.replace("{input}", str(message.input)).replace("{node}", message.node_id)


def _load_python(path: Path) -> JobFile:
    try:
        namespace = runpy.run_path(str(path), run_name="__beamagent_job__")
    except Exception as exc:
        raise InvalidJob(f"{path.name} failed to load: {type(exc).__name__}: {exc}") from None
    job = namespace.get("job")
    if not isinstance(job, Job):
        raise InvalidJob(f"{path.name} must define 'job', a beamagent.graph.Job")
    subs = namespace.get("subs") or {}
    backends = namespace.get("backends")
    if not isinstance(subs, Mapping) or not isinstance(backends, Mapping | None):
        raise InvalidJob(f"{path.name}: 'subs' and 'backends' must be dicts")
    return JobFile(job=job, subs=dict(subs), backends=backends)
