"""The Runtime API over a Ray cluster: sessions, routing with placement, store, async twins."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from beamagent.cluster import ClusterRuntime
from beamagent.errors import (
    BackendNotEligible,
    InvalidRouteRequest,
    NoBackendAvailable,
    RunError,
    RunNotFound,
    SessionNotFound,
)
from beamagent.graph import Job, LinearRouter, Node, RunStatus
from beamagent.messages import MessageType
from beamagent.testing.ray_cluster import LocalRayCluster


def test_a_session_runs_on_a_node_and_its_history_is_in_the_shared_store(
    crt: ClusterRuntime,
) -> None:
    session = crt.start_session(backend="local")
    try:
        messages = session.query("hello")
        assert messages[-1].content == "hello"
        info = session.session_info()
        assert info["node"] == session.node
        assert info["backend"] == "local"
        stored = crt.get_session_messages(session.session_id)
        assert [m.content for m in stored][-1] == "hello"
        assert crt.session(session.session_id).node == session.node
        assert session.session_id in crt.live_sessions()
    finally:
        session.stop()
    with pytest.raises(SessionNotFound):
        crt.session(session.session_id)


def test_routing_places_on_nodes_round_robin_and_journals_the_node(
    crt: ClusterRuntime, ray_cluster: LocalRayCluster
) -> None:
    # Round robin turns over (node, backend) pairs: local_gpu (one node) left out here.
    request = {"policy": "round_robin", "excluded_backends": ["local_gpu"]}
    sessions = [crt.start_session(routing=request) for _ in range(6)]
    try:
        nodes = [s.node for s in sessions]
        assert sorted(set(nodes)) == sorted(ray_cluster.node_ids)
        assert all(nodes.count(n) == 2 for n in set(nodes))
        journal = crt.routing_decisions(limit=6)
        assert {e["session_id"] for e in journal} == {s.session_id for s in sessions}
        assert all(e["ok"] and e["node"] in ray_cluster.node_ids for e in journal)
        assert {e["backend"] for e in journal} == {"local"}
    finally:
        for s in sessions:
            s.stop()


def test_a_backend_available_on_one_node_only_places_there(
    crt: ClusterRuntime, ray_cluster: LocalRayCluster
) -> None:
    gpu_node = ray_cluster.node_ids[-1]
    sessions = [crt.start_session(backend="local_gpu") for _ in range(3)]
    try:
        assert {s.node for s in sessions} == {gpu_node}
        assert sessions[0].query("on the gpu node")[-1].content == "on the gpu node"
        routed = crt.start_session(routing={"preferred_backends": ["local_gpu"]})
        sessions.append(routed)
        assert routed.node == gpu_node
        assert routed.session_info()["backend"] == "local_gpu"
    finally:
        for s in sessions:
            s.stop()


def test_an_unknown_health_status_is_a_typed_error_and_changes_nothing(
    crt: ClusterRuntime, ray_cluster: LocalRayCluster
) -> None:
    node = ray_cluster.node_ids[0]
    with pytest.raises(InvalidRouteRequest, match="bogus"):
        crt.set_node_health(node, "bogus")
    with pytest.raises(InvalidRouteRequest, match="bogus"):
        crt.set_health("local", "bogus")
    assert crt.node_health() == {}
    assert crt.backend_health() == {}


def test_a_node_marked_down_gets_nothing(crt: ClusterRuntime, ray_cluster: LocalRayCluster) -> None:
    down = ray_cluster.node_ids[1]
    crt.set_node_health(down, "down")
    sessions = []
    try:
        assert crt.node_health() == {down: "down"}
        request = {"policy": "round_robin", "excluded_backends": ["local_gpu"]}
        sessions = [crt.start_session(routing=request) for _ in range(6)]
        assert down not in {s.node for s in sessions}
        assert len({s.node for s in sessions}) == 2
        gpu = ray_cluster.node_ids[-1]
        crt.set_node_health(gpu, "down")
        with pytest.raises(BackendNotEligible):
            crt.start_session(backend="local_gpu")
        with pytest.raises(NoBackendAvailable):
            crt.start_session(
                routing={"preferred_backends": ["local_gpu"], "fallback_policy": "none"}
            )
    finally:
        crt.set_node_health(down, None)
        crt.set_node_health(ray_cluster.node_ids[-1], None)
        for s in sessions:
            s.stop()


def test_sticky_affinity_keeps_a_key_on_one_node(crt: ClusterRuntime) -> None:
    request = {"policy": "sticky", "affinity_key": "customer-7"}
    sessions = [crt.start_session(routing=request) for _ in range(4)]
    try:
        assert len({s.node for s in sessions}) == 1
    finally:
        for s in sessions:
            s.stop()


def test_streams_and_async_twins(crt: ClusterRuntime) -> None:
    session = crt.start_session(backend="local")
    try:
        streamed = list(session.stream("streamed"))
        assert streamed[-1].type is MessageType.RESULT
        assert streamed[-1].content == "streamed"

        async def main() -> None:
            answer = await session.aquery("async")
            assert answer[-1].content == "async"
            info = await session.asession_info()
            assert info["node"] == session.node
            got = [m async for m in session.astream("async stream")]
            assert got[-1].content == "async stream"
            other = await crt.astart_session(backend="local")
            assert (await other.aquery("x"))[-1].content == "x"
            await other.astop()

        asyncio.run(main())
        assert [
            m.content for m in crt.get_session_messages(session.session_id, types="result")
        ] == [
            "streamed",
            "async",
            "async stream",
        ]
    finally:
        session.stop()


def test_a_stopped_session_resumes_by_id_on_any_node(crt: ClusterRuntime) -> None:
    first = crt.start_session(backend="local")
    first.query("remember me")
    first.stop()
    again = crt.start_session(resume=first.session_id)
    try:
        assert again.session_id == first.session_id
        assert again.session_info()["resumed"] in ("native", "replay")
        again.query("second")
        contents = [m.content for m in crt.get_session_messages(first.session_id, types="result")]
        assert contents == ["remember me", "second"]
    finally:
        again.stop()


def test_top_shows_nodes_sessions_by_node_and_placements(
    crt: ClusterRuntime, ray_cluster: LocalRayCluster
) -> None:
    from typer.testing import CliRunner

    from beamagent.cli import app

    sessions = [crt.start_session(routing={"policy": "round_robin"}) for _ in range(3)]
    try:
        result = CliRunner().invoke(
            app, ["top", "--cluster", ray_cluster.address, "--once", "--json"]
        )
        assert result.exit_code == 0, result.output
        snapshot = json.loads(result.output)
        assert {n["node"] for n in snapshot["nodes"]} == set(ray_cluster.node_ids)
        rows = {r["session_id"]: r for r in snapshot["sessions"]}
        for session in sessions:
            assert rows[session.session_id]["node"] == session.node
            assert rows[session.session_id]["state"] == "ready"
        assert {d["node"] for d in snapshot["decisions"][:3]} <= set(ray_cluster.node_ids)
        frame = CliRunner().invoke(app, ["top", "--cluster", ray_cluster.address, "--once"])
        assert frame.exit_code == 0, frame.output
        assert "nodes (3)" in frame.output
        assert "placements" in frame.output
        assert sessions[0].session_id[:20] in frame.output
    finally:
        for session in sessions:
            session.stop()


def test_backend_health_applies_on_every_node_and_sticky_bindings_clear(
    crt: ClusterRuntime,
) -> None:
    crt.set_health("local_gpu", "down")
    try:
        assert crt.backend_health() == {"local_gpu": "down"}
        with pytest.raises(BackendNotEligible):
            crt.start_session(backend="local_gpu")
        assert crt.select_placement({"policy": "round_robin"})["backend"] == "local"
    finally:
        crt.set_health("local_gpu", None)
    first = crt.select_placement({"policy": "sticky", "affinity_key": "k"})
    assert crt.select_placement({"policy": "sticky", "affinity_key": "k"})["node"] == first["node"]
    crt.clear_routing()
    again = crt.select_placement({"policy": "sticky", "affinity_key": "k"})
    assert again["reasons"] == ["selected backend and bound sticky affinity"]


def test_a_durable_run_on_the_cluster_and_its_resume(crt: ClusterRuntime) -> None:
    job = Job(
        "pair",
        [
            Node("a", serving=lambda m: "a done", router=LinearRouter(["a", "b"])),
            Node("b", serving=lambda m: m.previous_result.body + ", b done"),
        ],
        start="a",
    )
    run = crt.run_job(job, "go", run_id="cluster-run-1")
    result = run.result(timeout=30)
    assert result.status is RunStatus.COMPLETED  # no End instruction: it ran out of routes
    assert result.output is not None
    assert result.output.body == "a done, b done"
    assert crt.list_runs(job_id="pair")[0]["status"] == "completed"
    assert crt.runs() == {}
    with pytest.raises(RunError):
        crt.resume_run("cluster-run-1", job)
    with pytest.raises(RunNotFound):
        crt.get_run("cluster-run-1")


def test_async_twins_run_side_by_side_without_blocking_the_loop(crt: ClusterRuntime) -> None:
    async def main() -> int:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        sessions = await asyncio.gather(*(crt.astart_session(backend="local") for _ in range(6)))
        answers = await asyncio.gather(*(s.aquery(f"q{i}") for i, s in enumerate(sessions)))
        assert [a[-1].content for a in answers] == [f"q{i}" for i in range(6)]
        await asyncio.gather(*(s.astop() for s in sessions))
        stop.set()
        await task
        return ticks

    assert asyncio.run(main()) > 10


def test_leaving_a_stream_early_leaves_the_session_ready(crt: ClusterRuntime) -> None:
    session = crt.start_session(backend="local")
    try:
        for _message in session.stream("cut short"):
            break
        assert session.query("next")[-1].content == "next"
        assert session.health() == "ready"
    finally:
        session.stop()


def test_another_driver_process_reaches_the_same_sessions(
    crt: ClusterRuntime, ray_cluster: LocalRayCluster, cluster_store: str
) -> None:
    session = crt.start_session(backend="local")
    try:
        session.query("from the first driver")
        code = (
            "import sys\n"
            "from beamagent.cluster import ClusterRuntime\n"
            "with ClusterRuntime(sys.argv[1], store=sys.argv[2], deploy_missing=False) as rt:\n"
            "    s = rt.session(sys.argv[3])\n"
            "    assert s.query('from the second driver')[-1].content == 'from the second driver'\n"
            "    print(s.session_info()['node'])\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, ray_cluster.address, cluster_store, session.session_id],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == session.node
        results = [m.content for m in crt.get_session_messages(session.session_id, types="result")]
        assert results == ["from the first driver", "from the second driver"]
    finally:
        session.stop()


def test_the_deploy_command_is_idempotent(
    crt: ClusterRuntime, ray_cluster: LocalRayCluster, cluster_store: str
) -> None:
    from typer.testing import CliRunner

    from beamagent.cli import app

    result = CliRunner().invoke(
        app, ["cluster", "deploy", ray_cluster.address, "--store", cluster_store, "--json"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.output)["nodes"]) == sorted(ray_cluster.node_ids)
    assert {n["node"] for n in crt.nodes() if n["alive"]} == set(ray_cluster.node_ids)
    refused = CliRunner().invoke(
        app, ["cluster", "deploy", ray_cluster.address, "--store", ":memory:"]
    )
    assert refused.exit_code == 1
    assert "every node reaches" in refused.output


def test_a_route_request_object_places_like_its_mapping(crt: ClusterRuntime) -> None:
    from beamagent.routing.policies import RouteRequest

    request = RouteRequest(
        policy="capability_first", health={"local_gpu": "down"}, excluded_backends=["openai"]
    )
    session = crt.start_session(routing=request)
    try:
        assert session.session_info()["backend"] == "local"
        assert crt.routing_decisions(limit=1)[0]["policy"] == "capability_first"
    finally:
        session.stop()
