"""Run every benchmark and write ``bench/REPORT.md``: one table of every figure.

Each script runs as a subprocess of this interpreter, one after another. A script whose
docstring says "Run pinned" runs under ``taskset -c 0`` (single-caller latency figures:
session, supervision, routing, store); the others run unpinned: ``graph.py`` pins itself
for half of its figures, ``scale.py`` and ``throughput.py`` measure what the whole
process does, ``backends.py`` drives a real CLI in subprocesses.

Every line a script prints in the benchmark format (``name: ours=... baseline=...
ratio=... (goal)`` or ``name: value unit (goal)``) becomes a row; a goal written as
``goal ratio <= X``, ``goal: ours >= X`` or ``goal <= X`` is checked, other goals are
shown as text.

Usage::

    python bench/run_all.py                 # everything, full size (several minutes)
    python bench/run_all.py --quick         # small N: a smoke run
    python bench/run_all.py --only scale    # one script (repeat --only for more)
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import attrs

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

#: The N of ``scale.py`` here: P5's 100,000 (about 40 s with the runtime's stop).
SCALE_N = 100_000


@attrs.frozen
class Script:
    """One benchmark script and how to run it."""

    name: str
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()
    timeout: float = 900.0
    quick_timeout: float = 300.0
    #: Needs something beyond this repository (a real CLI); a failure is reported, not fatal.
    optional: bool = False
    #: Modules it imports from the ``bench`` extra; skipped (and said so) without them.
    requires: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return BENCH / f"{self.name}.py"

    @property
    def pinned(self) -> bool:
        doc = ast.get_docstring(ast.parse(self.path.read_text())) or ""
        return "Run pinned" in doc


SCRIPTS = (
    Script("session", quick_args=("1000",)),
    Script("supervision"),
    Script("graph", requires=("langgraph",)),
    Script("routing"),
    Script("store"),
    Script("store_postgres", quick_args=("200",), requires=("psycopg", "psycopg_pool")),
    Script("backends", optional=True),
    Script("tools", optional=True),
    Script("telemetry", quick_args=("500",)),
    Script("scale", args=(str(SCALE_N),), quick_args=("5000",)),
    Script("throughput"),
    Script("cluster", quick_args=("50",), requires=("ray",)),
)

#: The issue's goal labels, by script and figure name.
LABELS: tuple[tuple[str, str, str], ...] = (
    ("session", r"^query_local_memory_store$", "P1 query ratio (memory store vs raw ask)"),
    ("session", r"^query_local_sqlite_store_vs_raw_sqlite3$", "P1 query ratio (vs raw sqlite3)"),
    ("graph", r"^(self-loop|3-node linear)", "P2 graph step vs LangGraph"),
    ("supervision", r"^crash_to_restarted_answer$", "P3 crash->restarted answer"),
    ("routing", r"^select_backend_registry$", "P4 select_backend vs raw ask"),
    ("scale", r".", "P5 scale"),
    ("store", r"^record_message$", "P7 record_message vs raw sqlite3"),
    ("throughput", r".", "throughput"),
    ("cluster", r".", "cluster on Ray (issue 16)"),
)

REPORT_LINE = re.compile(
    r"^(?P<name>.+?): ours=(?P<ours>-?[\d.]+|inf|nan) (?P<unit>\S+)\s+"
    r"baseline=(?P<base>-?[\d.]+|inf|nan) \S+\s+ratio=(?P<ratio>-?[\d.]+|inf|nan)"
    r"(?:\s+\((?P<goal>.*)\))?\s*$"
)
FIGURE_LINE = re.compile(
    r"^(?P<name>.+?): (?P<value>-?[\d.]+|inf|nan) (?P<unit>\S+)(?:\s+\((?P<goal>.*)\))?\s*$"
)
GOAL = re.compile(r"goal:?\s*(?P<what>ratio|ours)?\s*(?P<op><=|>=)\s*(?P<bound>[\d][\d,]*\.?\d*)")


@attrs.frozen
class Row:
    """One figure."""

    script: str
    name: str
    unit: str
    ours: float
    baseline: float | None = None
    ratio: float | None = None
    goal: str = ""

    @property
    def label(self) -> str:
        for script, pattern, label in LABELS:
            if script == self.script and re.search(pattern, self.name):
                return label
        return ""

    @property
    def verdict(self) -> str:
        """``pass``/``FAIL`` when the goal is machine-checkable, else ``-``."""
        match = GOAL.search(self.goal)
        if match is None:
            return "-"
        bound = float(match["bound"].replace(",", ""))
        value = self.ratio if match["what"] == "ratio" else self.ours
        if value is None:
            return "-"
        ok = value <= bound if match["op"] == "<=" else value >= bound
        return "pass" if ok else "FAIL"


def parse(script: str, stdout: str) -> list[Row]:
    rows = []
    for raw in stdout.splitlines():
        line = raw.strip()
        if m := REPORT_LINE.match(line):
            rows.append(
                Row(
                    script,
                    m["name"],
                    m["unit"],
                    float(m["ours"]),
                    float(m["base"]),
                    float(m["ratio"]),
                    m["goal"] or "",
                )
            )
        elif m := FIGURE_LINE.match(line):
            rows.append(Row(script, m["name"], m["unit"], float(m["value"]), goal=m["goal"] or ""))
    return rows


@attrs.frozen
class Outcome:
    """What one script run gave."""

    script: Script
    command: str
    pinned: bool
    seconds: float
    returncode: int | None  # None: timed out
    rows: list[Row]
    error: str = ""


def run(script: Script, quick: bool) -> Outcome:
    args = script.quick_args if quick else script.args
    missing = [m for m in script.requires if importlib.util.find_spec(m) is None]
    if missing:
        error = f"skipped: needs {', '.join(missing)} (pip install -e '.[bench]')"
        print(f"== {script.name}: {error}", flush=True)
        return Outcome(script, "-", False, 0.0, None, [], error)
    pinned = script.pinned and shutil.which("taskset") is not None
    command = [sys.executable, str(script.path), *args]
    if pinned:
        command = ["taskset", "-c", "0", *command]
    shown = " ".join(["taskset -c 0"] * pinned + ["python", f"bench/{script.name}.py", *args])
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
    print(f"== {shown}", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=script.quick_timeout if quick else script.timeout,
        )
    except subprocess.TimeoutExpired as exc:
        seconds = time.perf_counter() - start
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        print(out, end="", flush=True)
        rows = parse(script.name, out)
        error = f"timed out after {seconds:.0f} s"
        return Outcome(script, shown, pinned, seconds, None, rows, error)
    seconds = time.perf_counter() - start
    print(done.stdout, end="", flush=True)
    error = ""
    if done.returncode != 0:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:]
        error = f"exit {done.returncode}: {tail[0] if tail else ''}"
        print(f"   {error}", flush=True)
    rows = parse(script.name, done.stdout)
    return Outcome(script, shown, pinned, seconds, done.returncode, rows, error)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    return f"{value:,.2f}"


def machine() -> str:
    mem = "?"
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({model}), {mem} RAM, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}; "
        f"load average at start {load}"
    )


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/REPORT.md")
    return f"{head}{' (with uncommitted changes)' if dirty else ''}"


def table(outcomes: list[Outcome]) -> str:
    header = "| Goal label | Script | Figure | Ours | Baseline | Ratio | Goal | Pass |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for outcome in outcomes:
        for row in outcome.rows:
            base = f"{fmt(row.baseline)} {row.unit}" if row.baseline is not None else "-"
            goal = row.goal.replace("|", "\\|")
            lines.append(
                f"| {row.label} | {row.script} | {row.name} | {fmt(row.ours)} {row.unit} | "
                f"{base} | {fmt(row.ratio)} | {goal} | {row.verdict} |"
            )
        if outcome.error:
            lines.append(f"| | {outcome.script.name} | **{outcome.error}** | | | | | |")
    return "\n".join(lines)


def write_report(outcomes: list[Outcome], argv: list[str], started: str, host: str) -> str:
    rows = [row for o in outcomes for row in o.rows]
    verdicts = [row.verdict for row in rows]
    runs = "\n".join(
        f"| {o.script.name} | `{o.command}` | {'pinned to CPU 0' if o.pinned else 'unpinned'} "
        f"| {o.seconds:.0f} s | {'ok' if not o.error else o.error} |"
        for o in outcomes
    )
    return f"""# Benchmark report

Generated by `python bench/run_all.py{"".join(" " + a for a in argv)}`.

- Date: {started}
- Machine: {host}
- Commit: {commit()}
- Checked goals: {verdicts.count("pass")} pass, {verdicts.count("FAIL")} fail
  ({verdicts.count("-")} figures have no machine-checkable goal)

Every ratio is ours / baseline, both measured in the same run; most figures
alternate rounds of each side and keep each side's best round (`bench/_common.py`).
`scale.py` compares a query at N sessions with the same query at one session, measured
before the others started. The machine may be shared with other work, so figures vary
from run to run; compare ratios, not absolute times.

## Runs

Scripts whose docstring says "Run pinned" run under `taskset -c 0` (one caller's
latency across threads, where a wake-up on another CPU of a VM costs tens of
microseconds); the others run unpinned (`graph.py` pins itself for its "(pinned to 1
CPU)" figures; `scale.py` and `throughput.py` measure the whole process).

| Script | Command | CPUs | Time | Status |
|---|---|---|---|---|
{runs}

## Figures

{table(outcomes)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N: a fast smoke run")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only this script (repeatable)"
    )
    parser.add_argument("--output", type=Path, default=BENCH / "REPORT.md")
    options = parser.parse_args()
    known = {s.name for s in SCRIPTS}
    for name in options.only or ():
        if name not in known:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(sorted(known))}")
    chosen = [s for s in SCRIPTS if not options.only or s.name in options.only]
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    host = machine()
    outcomes = [run(script, options.quick) for script in chosen]
    print()
    print(table(outcomes))
    options.output.write_text(write_report(outcomes, sys.argv[1:], started, host))
    print(f"\nwrote {options.output}")
    failed = [
        o for o in outcomes if o.error and not o.script.optional and not o.error.startswith("skip")
    ]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
