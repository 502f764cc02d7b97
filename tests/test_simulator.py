"""The simulated Neo API over real loopback HTTP: shapes, paging, auth, faults and ground truth."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from exporter.simulator import (
    DEMO_API_KEY,
    DEMO_TOKEN,
    Faults,
    ManualClock,
    ScaledClock,
    SimulatedApi,
    World,
    serve,
)
from exporter.simulator import server as simulator_server

START = datetime(2026, 11, 20, 9, tzinfo=UTC)
FIXTURE = Path(__file__).parent / "fixtures" / "neo-openapi-seeds.yaml"
STREAMS = "/api/v1/usage/streams"
TASK_USAGES = "/api/v1/usage/tasks"
TERMINAL = {"completed", "error", "failed", "aborted", "blocked"}


# -- helpers ----------------------------------------------------------------------------------


def _jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 `nullable: true` -> a JSON-Schema type union (the seeds use both)."""
    if isinstance(node, list):
        return [_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _jsonschema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


SPEC = _jsonschema(yaml.safe_load(FIXTURE.read_text()))


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}
    return jsonschema.Draft202012Validator(schema)


def schema_errors(name: str, body: Any) -> list[str]:
    return [error.message for error in validator(name).iter_errors(body)]


def client_for(api: SimulatedApi, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=api.url, headers=headers or {"X-Api-Key": DEMO_API_KEY})


def fetch_all(http: httpx.Client, path: str, limit: int = 200, **params: str) -> list[Any]:
    rows: list[Any] = []
    offset = 0
    while True:
        body = http.get(path, params={**params, "limit": limit, "offset": offset}).json()
        rows.extend(body["data"])
        offset += len(body["data"])
        if not body["has_more"]:
            assert offset == body["total"]
            return rows


def money(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def world(clock: ManualClock) -> World:
    return World(seed=7, clock=clock, tasks_per_day=600)


@pytest.fixture
def api(world: World) -> Iterator[SimulatedApi]:
    with SimulatedApi(world) as running:
        yield running


@pytest.fixture
def http(api: SimulatedApi) -> Iterator[httpx.Client]:
    with client_for(api) as client:
        yield client


# -- clocks and determinism ------------------------------------------------------------------


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(START)
    assert clock() == clock.now() == START
    clock.advance(90)
    assert clock.now() == START + timedelta(seconds=90)
    clock.set(START + timedelta(days=1))
    assert clock.now() == START + timedelta(days=1)


def test_scaled_clock_runs_faster_than_real_time() -> None:
    real = [100.0]
    clock = ScaledClock(START, speed=1000, ticks=lambda: real[0])
    assert clock() == START
    real[0] += 0.05
    assert clock() - START == timedelta(seconds=50)
    assert ScaledClock(START, speed=2).speed == 2  # the default follows time.monotonic


def test_same_seed_gives_the_same_world_however_it_is_observed() -> None:
    """One jump of three hours and 36 small steps give the same world."""
    jump, steps = ManualClock(START), ManualClock(START)
    a = World(seed=3, clock=jump, tasks_per_day=500, history=86400)
    b = World(seed=3, clock=steps, tasks_per_day=500, history=86400)
    jump.advance(3 * 3600)
    for _ in range(36):
        steps.advance(300)
        b.sync()
    assert a.task_ids() == b.task_ids()
    assert a.visible_streams() == b.visible_streams()
    assert a.tasks_by_status() == b.tasks_by_status()
    other = World(seed=4, clock=jump, tasks_per_day=500, history=86400)
    assert other.task_ids() != a.task_ids()


def test_history_covers_the_requested_past(world: World) -> None:
    starts = [s.started_at for s in world.visible_streams()]
    assert min(starts) < START - timedelta(days=2, hours=20)
    assert max(starts) <= START
    assert 1500 < len(world.task_ids()) < 2100  # 600 a day for three days


# -- shapes ------------------------------------------------------------------------------------


def test_every_endpoint_matches_the_seed_schemas(http: httpx.Client, world: World) -> None:
    page = http.get(STREAMS, params={"limit": 200}).json()
    assert schema_errors("TaskUsageList", page) == []
    assert all(row["stream_id"] for row in page["data"])
    tasks = http.get(TASK_USAGES, params={"limit": 200}).json()
    assert schema_errors("TaskUsageList", tasks) == []
    assert all("stream_id" not in row and row["stream_count"] >= 1 for row in tasks["data"])
    task_id = page["data"][0]["task_id"]
    assert schema_errors("TaskUsage", http.get(f"{TASK_USAGES}/{task_id}").json()) == []
    details = http.get(f"/api/v1/tasks/{task_id}").json()
    assert schema_errors("TaskDetailsResponse", details) == []
    assert schema_errors("TaskList", http.get("/api/v1/tasks").json()) == []
    assert schema_errors("UsageSummary", http.get("/api/v1/usage/summary").json()) == []
    assert schema_errors("CreditBalance", http.get("/api/v1/billing/credits").json()) == []
    missing = http.get("/api/v1/tasks/no-such-task")
    assert missing.status_code == 404
    assert schema_errors("ErrorResponse", missing.json()) == []
    assert missing.json()["code"] == "not_exists"


def test_rows_are_internally_consistent(http: httpx.Client) -> None:
    for row in fetch_all(http, STREAMS):
        history = row["tool_call_history"]
        assert [call["index"] for call in history] == list(range(len(history)))
        assert row["tool_calls"] == len(history)
        assert sum(e["calls"] for e in row["tool_breakdown"].values()) == row["tool_calls"]
        assert row["tool_time_ms"] == sum(call["duration_ms"] for call in history)
        assert sum(row["agent_breakdown"].values()) == row["agent_triggers"]
        assert money(row["neo_credits"]).as_tuple().exponent >= -6
        assert (row["llm_cost"] is not None) == row["is_byok"] == (row["neo_cost"] is not None)
        assert row["status"] in TERMINAL
        assert (row["error_message"] is not None) == (row["status"] in ("error", "failed"))
        assert "email" not in row  # solo account


# -- paging and filters ---------------------------------------------------------------------


def test_paging_returns_every_row_once_newest_first(http: httpx.Client, world: World) -> None:
    rows = fetch_all(http, STREAMS, limit=37)
    keys = [(row["created_at"], row["stream_id"]) for row in rows]
    assert keys == sorted(keys, reverse=True)
    assert len(set(keys)) == len(keys) == len(world.visible_streams())
    last = http.get(STREAMS, params={"limit": 5, "offset": len(rows) - 2}).json()
    assert (len(last["data"]), last["has_more"], last["total"]) == (2, False, len(rows))
    assert http.get(STREAMS, params={"offset": len(rows) + 10}).json()["data"] == []


def test_from_is_inclusive_and_to_is_exclusive(http: httpx.Client) -> None:
    row = http.get(STREAMS, params={"limit": 1, "offset": 100}).json()["data"][0]
    since = http.get(STREAMS, params={"from": row["created_at"], "limit": 200}).json()
    until = http.get(STREAMS, params={"to": row["created_at"], "limit": 200}).json()
    assert row["stream_id"] in {r["stream_id"] for r in since["data"]}
    assert since["total"] == 101
    assert row["stream_id"] not in {r["stream_id"] for r in until["data"]}
    assert since["total"] + until["total"] == http.get(STREAMS).json()["total"]


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "201"}, {"limit": "ten"}, {"offset": "-1"}, {"from": "yesterday"}],
)
def test_bad_query_is_400_invalid_request(http: httpx.Client, params: dict[str, str]) -> None:
    response = http.get(STREAMS, params=params)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


def test_task_filter_and_task_usage_sum_their_streams(http: httpx.Client, world: World) -> None:
    multi = [t for t, n in _streams_per_task(world).items() if n > 1]
    assert len(multi) >= 5
    for task_id in multi[:5]:
        streams = fetch_all(http, STREAMS, task_id=task_id)
        task = http.get(f"{TASK_USAGES}/{task_id}").json()
        assert task["stream_count"] == len(streams) > 1
        for field in ("step_count", "tool_calls", "agent_triggers", "total_execution_ms"):
            assert task[field] == sum(row[field] for row in streams)
        assert money(task["neo_credits"]) == sum(money(r["neo_credits"]) for r in streams)
        assert len(task["tool_call_history"]) == task["tool_calls"]
        listed = http.get(TASK_USAGES, params={"task_id": task_id}).json()["data"]
        assert listed == [task]


def _streams_per_task(world: World) -> dict[str, int]:
    counts: dict[str, int] = {}
    for stream in world.visible_streams():
        counts[stream.task_id] = counts.get(stream.task_id, 0) + 1
    return counts


# -- auth and routing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-Api-Key": "neo_sk_wrong"}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": f"Bearer {DEMO_TOKEN}"}, 200),
        ({"X-Api-Key": DEMO_API_KEY}, 200),
    ],
)
def test_credentials(api: SimulatedApi, headers: dict[str, str], status: int) -> None:
    response = httpx.get(api.url + STREAMS, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.json()["code"] == "unauthorized"
        assert response.json()["error_id"]
        assert schema_errors("ErrorResponse", response.json()) == []


def test_team_member_cannot_read_usage(world: World) -> None:
    with SimulatedApi(world, role="member") as api, client_for(api) as http:
        assert http.get(STREAMS).status_code == 403
        assert http.get(STREAMS).json()["code"] == "forbidden"
        assert http.get("/api/v1/usage/summary").status_code == 403
        assert http.get("/api/v1/tasks").status_code == 200


def test_unknown_path_and_wrong_method(api: SimulatedApi, http: httpx.Client) -> None:
    assert http.get("/api/v1/nothing").status_code == 404
    post = http.post(STREAMS, json={})
    assert (post.status_code, post.headers["Allow"]) == (405, "GET")
    task_id = http.get(STREAMS, params={"limit": 1}).json()["data"][0]["task_id"]
    http.get(f"/api/v1/tasks/{task_id}")
    assert api.requests[("/api/v1/tasks/{id}", 200)] == 1
    assert api.requests[("unknown", 404)] == 1
    assert api.requests[(STREAMS, 405)] == 1


# -- ground truth ---------------------------------------------------------------------------------


def test_served_rows_sum_to_ground_truth(http: httpx.Client, world: World) -> None:
    rows = fetch_all(http, STREAMS)
    truth = world.truth_totals()
    assert truth["runs"] == len(rows)
    assert truth["credits"] == sum(money(r["neo_credits"]) for r in rows)
    assert truth["llm_cost"] == sum(money(r["llm_cost"]) for r in rows) > 0
    assert truth["neo_cost"] == sum(money(r["neo_cost"]) for r in rows) > 0
    pairs = {
        "steps": "step_count", "tool_calls": "tool_calls", "agent_triggers": "agent_triggers",
        "llm_ms": "llm_time_ms", "tool_ms": "tool_time_ms", "exec_ms": "total_execution_ms",
    }  # fmt: skip
    for mine, theirs in pairs.items():
        assert truth[mine] == sum(r[theirs] for r in rows), mine
    assert truth["tool_call_count"] == sum(len(r["tool_call_history"]) for r in rows)
    since = START - timedelta(hours=6)
    recent = [s for s in world.visible_streams() if s.started_at >= since]
    assert world.truth_totals(since)["runs"] == len(recent) < len(rows)


def test_row_for_matches_the_served_row(http: httpx.Client, world: World) -> None:
    served = http.get(STREAMS, params={"limit": 3}).json()["data"]
    for row in served:
        assert world.row_for(row["stream_id"]) == row


def test_summary_and_credits_agree_with_truth(http: httpx.Client, world: World) -> None:
    summary = http.get("/api/v1/usage/summary").json()
    truth = world.truth_totals()
    assert money(summary["total_neo_credits"]) == truth["credits"]
    assert summary["total_steps"] == truth["steps"]
    assert summary["total_tasks"] == len(_streams_per_task(world))
    assert sum(summary["by_status"].values()) == summary["total_tasks"]
    assert sum(m["tasks"] for m in summary["by_model"].values()) == summary["total_tasks"]
    balance = http.get("/api/v1/billing/credits").json()
    assert money(balance["used_credits"]) == truth["credits"]
    assert (
        money(balance["available_credits"]) == money(balance["issued_credits"]) - truth["credits"]
    )
    grouped = http.get("/api/v1/usage/summary", params={"group_by": "day"}).json()
    assert sum(p["tasks"] for p in grouped["by_period"]) >= summary["total_tasks"]


def test_team_view_adds_emails(clock: ManualClock) -> None:
    world = World(seed=7, clock=clock, tasks_per_day=300, team=True)
    with SimulatedApi(world, role="admin") as api, client_for(api) as http:
        rows = http.get(STREAMS, params={"limit": 50}).json()["data"]
        assert all(row["email"].endswith("@example.com") for row in rows)
        summary = http.get("/api/v1/usage/summary").json()
        by_email = summary["by_email"]
        assert sum(e["tasks"] for e in by_email) == summary["total_tasks"]
        assert [e["neo_credits"] for e in by_email] == sorted(
            (e["neo_credits"] for e in by_email), reverse=True
        )


# -- evolution ------------------------------------------------------------------------------------


def test_old_tasks_are_continued_in_the_first_hour(clock: ManualClock, world: World) -> None:
    with SimulatedApi(world) as api, client_for(api) as http:
        before = {s.stream_id for s in world.visible_streams()}
        clock.advance(3 * 3600)
        new = [s for s in world.visible_streams() if s.stream_id not in before]
        day_old = {s.task_id for s in new if s.started_at < START + timedelta(hours=1)} & {
            s.task_id for s in world.visible_streams() if s.started_at < START - timedelta(days=1)
        }
        assert len(day_old) >= 3
        task_id = sorted(day_old)[0]
        rows = fetch_all(http, STREAMS, task_id=task_id)
        assert len(rows) >= 2
        newest = max(rows, key=lambda r: r["created_at"])
        assert datetime.fromisoformat(newest["created_at"]) >= START
        details = http.get(f"/api/v1/tasks/{task_id}").json()
        assert newest["stream_id"] in {s["stream_id"] for s in details["streams"]}


def test_forced_continuation_reactivates_a_finished_task(clock: ManualClock, world: World) -> None:
    old = next(
        s for s in world.visible_streams() if s.started_at < START - timedelta(days=2)
    ).task_id
    with SimulatedApi(world) as api, client_for(api) as http:
        assert http.get(f"/api/v1/tasks/{old}").json()["task"]["status"] in TERMINAL
        world.continue_task(old)
        assert http.get(f"/api/v1/tasks/{old}").json()["task"]["status"] == "pending"
        clock.advance(40)
        live = {t["id"] for t in http.get("/api/v1/tasks", params={"status": "active"}).json()[
            "data"]}  # fmt: skip
        assert old in live
        clock.advance(3 * 3600)
        rows = fetch_all(http, STREAMS, task_id=old)
        assert max(datetime.fromisoformat(r["created_at"]) for r in rows) >= START
        usage = http.get(f"{TASK_USAGES}/{old}").json()
        assert usage["stream_count"] == len(rows) >= 2


def test_task_mode_serves_the_task_creation_time(clock: ManualClock) -> None:
    world = World(seed=7, clock=clock, tasks_per_day=600, stream_created_at="task")
    old = next(s for s in world.visible_streams() if s.started_at < START - timedelta(days=2))
    world.continue_task(old.task_id)
    clock.advance(3 * 3600)
    streams = [s for s in world.visible_streams() if s.task_id == old.task_id]
    assert len(streams) >= 2
    assert {s.created_at for s in streams} == {old.created_at}
    assert max(s.started_at for s in streams) >= START
    with SimulatedApi(world) as api, client_for(api) as http:
        details = http.get(f"/api/v1/tasks/{old.task_id}").json()
        starts = {datetime.fromisoformat(s["created_at"]) for s in details["streams"]}
        assert {s.started_at for s in streams} <= starts


def test_values_never_decrease_and_some_settle(clock: ManualClock) -> None:
    world = World(seed=7, clock=clock, tasks_per_day=1500, history=3 * 3600)
    seen: dict[str, tuple[Decimal, int, int, tuple[str, ...]]] = {}
    grew = 0
    for _ in range(40):
        clock.advance(180)
        for s in world.visible_streams():
            now = (s.credits, s.steps, s.exec_ms, tuple(name for name, _ in s.tool_durations))
            old = seen.get(s.stream_id)
            if old is not None:
                assert all(a <= b for a, b in zip(old[:3], now[:3], strict=True))
                assert now[3][: len(old[3])] == old[3]  # history only appended to
                grew += now != old
            seen[s.stream_id] = now
    assert grew >= 3


def test_live_rows_grow_while_running(clock: ManualClock) -> None:
    world = World(seed=7, clock=clock, tasks_per_day=600, live_rows=True)
    with SimulatedApi(world) as api, client_for(api) as http:
        running = [r for r in fetch_all(http, STREAMS) if r["status"] == "running"]
        assert len(running) >= 3
        clock.advance(60)
        later = {r["stream_id"]: r for r in fetch_all(http, STREAMS)}
        grown = 0
        for row in running:
            again = later[row["stream_id"]]
            for field in ("total_execution_ms", "step_count", "tool_calls", "llm_time_ms"):
                assert again[field] >= row[field]
            assert money(again["neo_credits"]) >= money(row["neo_credits"])
            grown += again["total_execution_ms"] > row["total_execution_ms"]
        assert grown >= 2  # the others had finished and wait for their final row
        clock.advance(3 * 3600)
        finished = {r["stream_id"]: r["status"] for r in fetch_all(http, STREAMS)}
        assert all(finished[row["stream_id"]] in TERMINAL for row in running)


def test_task_statuses_follow_their_streams(clock: ManualClock, world: World) -> None:
    with SimulatedApi(world) as api, client_for(api) as http:
        clock.advance(7)
        statuses = world.tasks_by_status()
        for wanted in ("active", "pending"):
            listed = http.get("/api/v1/tasks", params={"status": wanted, "limit": 100}).json()
            expected = sum(n for (_, status), n in statuses.items() if status == wanted)
            assert len(listed["data"]) == expected
            assert {t["status"] for t in listed["data"]} <= {wanted}
        assert sum(n for (_, s), n in statuses.items() if s == "completed") > 1000
        cursor, seen = None, []
        for _ in range(3):
            params = {"limit": "7", "cursor": cursor} if cursor else {"limit": "7"}
            page = http.get("/api/v1/tasks", params=params).json()
            seen += [t["id"] for t in page["data"]]
            cursor = page["next_cursor"]
        assert len(seen) == len(set(seen)) == 21
        assert seen == world.task_ids()[::-1][:21]


# -- faults ------------------------------------------------------------------------------------


def test_error_rate_burst_and_rate_limit(api: SimulatedApi, http: httpx.Client) -> None:
    api.faults.burst(3, status=502)
    assert [http.get(STREAMS).status_code for _ in range(4)] == [502, 502, 502, 200]
    api.faults.rate_limit(2, retry_after=7)
    limited = [http.get(STREAMS) for _ in range(3)]
    assert [r.status_code for r in limited] == [429, 429, 200]
    assert limited[0].headers["Retry-After"] == "7"
    api.faults.error_rate = 1.0
    failed = [http.get(STREAMS) for _ in range(20)]
    assert {r.status_code for r in failed} <= {500, 502, 503}
    assert all(schema_errors("ErrorResponse", r.json()) == [] for r in failed)
    assert api.requests[(STREAMS, 502)] >= 3
    assert api.requests[(STREAMS, 429)] == 2


def test_latency_slows_answers(
    api: SimulatedApi, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(simulator_server.time, "sleep", slept.append)
    api.faults.latency = 0.2
    assert http.get(STREAMS).status_code == 200
    assert slept == [0.2]  # each answer waits that long before it is given


def test_truncated_and_garbage_bodies(api: SimulatedApi, http: httpx.Client) -> None:
    whole = http.get(STREAMS).content
    api.faults.truncate_rate = 1.0
    cut = http.get(STREAMS)
    assert cut.status_code == 200
    assert len(cut.content) == len(whole) // 2
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.content)
    api.faults.truncate_rate, api.faults.garbage_rate = 0.0, 1.0
    junk = http.get(STREAMS)
    assert junk.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(junk.content)


def test_payload_drift_faults(api: SimulatedApi, http: httpx.Client) -> None:
    api.faults.extra_fields = True
    page = http.get(STREAMS, params={"limit": 200}).json()
    assert "x_sim_future_field" in page
    assert all("x_sim_flag" in r for r in page["data"])
    assert schema_errors("TaskUsageList", page) == []  # unknown fields are allowed
    api.faults.extra_fields, api.faults.null_fields = False, True
    rows = http.get(STREAMS, params={"limit": 200}).json()["data"]
    nulled = [r for r in rows if r["neo_credits"] is None]
    assert 0 < len(nulled) < len(rows)
    assert all(r["tool_call_history"] is None for r in nulled)
    assert schema_errors("TaskUsageList", {"data": rows, "has_more": True, "total": 1}) == []
    api.faults.null_fields, api.faults.unknown_status = False, True
    rows = http.get(STREAMS, params={"limit": 200}).json()["data"]
    odd = [r for r in rows if r["status"] == "quarantined"]
    assert 0 < len(odd) < len(rows)
    assert all(schema_errors("TaskUsage", r) for r in odd)
    api.faults.unknown_status, api.faults.wrong_type_rate = False, 1.0
    rows = http.get(STREAMS, params={"limit": 50}).json()["data"]
    assert all(schema_errors("TaskUsage", r) for r in rows)


def test_faults_are_off_by_default_and_seeded() -> None:
    assert Faults().failure() is None
    a, b = Faults(error_rate=0.5, seed=9), Faults(error_rate=0.5, seed=9)
    codes_a = [f.status if (f := a.failure()) else 200 for _ in range(50)]
    codes_b = [f.status if (f := b.failure()) else 200 for _ in range(50)]
    assert codes_a == codes_b
    assert len(set(codes_a)) > 2  # 200 and at least two of 500/502/503


# -- scale and serve --------------------------------------------------------------------------


def test_busy_account_generates_and_pages() -> None:
    """A busy account (50,000 tasks a day) serves whole pages; how fast is measured by
    the benchmarks (bench/), which run the simulator at 100,000 tasks."""
    world = World(seed=1, clock=ManualClock(START), tasks_per_day=50_000)
    assert len(world.task_ids()) > 140_000
    with SimulatedApi(world) as api, client_for(api) as http:
        page = http.get(STREAMS, params={"limit": 200}).json()
    assert len(page["data"]) == 200
    assert page["total"] > 150_000


def test_serve_runs_until_stopped() -> None:
    stop = threading.Event()
    urls: list[str] = []
    listening = threading.Event()

    def told(url: str) -> None:
        urls.append(url)
        listening.set()

    kwargs: dict[str, Any] = {
        "seed": 2, "speed": 60.0, "tasks_per_day": 500.0, "api_key": "neo_sk_" + "x" * 32,
        "token": None, "live_rows": False, "stop": stop, "on_listening": told,
    }  # fmt: skip
    runner = threading.Thread(target=serve, args=("127.0.0.1:0",), kwargs=kwargs)
    runner.start()
    try:
        assert listening.wait(timeout=60), "the simulator never said it was listening"
        url = f"{urls[0]}{STREAMS}"  # the port it picked, never a guess
        response = httpx.get(url, headers={"X-Api-Key": "neo_sk_" + "x" * 32})
        assert response.status_code == 200
        assert response.json()["total"] > 1000
    finally:
        stop.set()
        runner.join(timeout=10)
    assert not runner.is_alive()
