"""The simulated usage summary against its ground truth: lag, credit reset, by_model shapes
and runs hidden from every usage list, over real loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from exporter.simulator import Faults, ManualClock, SimulatedApi, StreamTruth, World
from exporter.simulator.model import iso, to_ms
from exporter.simulator.views import money as stream_money
from tests.test_simulator import START, STREAMS, TASK_USAGES, client_for, fetch_all, money

SUMMARY = "/api/v1/usage/summary"
CREDITS = "/api/v1/billing/credits"
RATE = 300  # tasks a day: small worlds keep these tests to about a second each


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@contextmanager
def served(world: World) -> Iterator[tuple[SimulatedApi, httpx.Client]]:
    with SimulatedApi(world) as api, client_for(api) as http:
        yield api, http


def by_model(streams: Iterable[StreamTruth]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for s in streams:
        out[s.model] = out.get(s.model, Decimal(0)) + s.credits
    return out


def summed(streams: Iterable[StreamTruth]) -> Decimal:
    return sum((s.credits for s in streams), Decimal(0))


def summary_credits(body: dict[str, Any]) -> tuple[Decimal, dict[str, Decimal]]:
    models = {m: money(v["neo_credits"]) for m, v in body["by_model"].items()}
    return money(body["total_neo_credits"]), models


def test_summary_is_the_sum_of_the_listings_with_knobs_off(clock: ManualClock) -> None:
    world = World(seed=7, clock=clock, tasks_per_day=RATE)
    clock.advance(1800)
    with served(world) as (_, http):
        rows = fetch_all(http, STREAMS)
        truth = world.visible_streams()
        assert world.hidden_streams() == []
        total, models = summary_credits(http.get(SUMMARY).json())
        assert total == summed(truth) == sum(money(r["neo_credits"]) for r in rows) > 0
        assert models == by_model(truth)
        assert money(http.get(CREDITS).json()["used_credits"]) == total


@pytest.mark.parametrize("live_rows", [False, True])
def test_lagging_summary_answers_as_the_account_was(clock: ManualClock, live_rows: bool) -> None:
    world = World(seed=7, clock=clock, tasks_per_day=RATE, live_rows=live_rows)
    clock.advance(1200)
    then = world.visible_streams()
    clock.advance(600)
    with served(world) as (api, http):
        now_total, _ = summary_credits(http.get(SUMMARY).json())
        assert now_total == summed(world.visible_streams()) != summed(then)
        api.faults.summary_lag = 600
        total, models = summary_credits(http.get(SUMMARY).json())
        assert (total, models) == (summed(then), by_model(then))
        assert money(http.get(CREDITS).json()["used_credits"]) == total


def _spent_since(world: World, reset: int) -> list[StreamTruth]:
    """Each visible stream with only the credits it gained after ``reset``, worked out
    from the full usage view of the stream (not the summary's shortcut)."""
    out = []
    for s in world.visible_streams():
        stream = world.stream_by_id[s.stream_id]
        before = stream_money(stream.task, world.usage(stream, reset).credits)[0]
        out.append(replace(s, credits=s.credits - before))
    return out


@pytest.mark.parametrize("live_rows", [False, True])
def test_credit_reset_counts_only_spend_after_it(clock: ManualClock, live_rows: bool) -> None:
    world = World(seed=7, clock=clock, tasks_per_day=RATE, live_rows=live_rows)
    clock.advance(900)
    reset = clock.now()
    at_reset = {s.stream_id: s.credits for s in world.visible_streams()}
    clock.advance(2400)
    with served(world) as (api, http):
        all_time = summary_credits(http.get(SUMMARY).json())[0]
        api.faults.summary_reset_at = reset + timedelta(hours=1)  # not reached yet
        assert summary_credits(http.get(SUMMARY).json())[0] == all_time
        api.faults.summary_reset_at = reset
        body = http.get(SUMMARY).json()
        total, models = summary_credits(body)
        after = [s for s in _spent_since(world, to_ms(reset)) if s.credits]
        assert 0 < total == summed(after) < all_time
        assert models == by_model(after)
        assert money(body["total_neo_credits_post_reset"]) == total
        assert body["last_credit_reset"] == iso(to_ms(reset))
        assert money(http.get(CREDITS).json()["used_credits"]) == total
        if live_rows:  # every started stream is listed: the listings alone tell the spend
            now = world.visible_streams()
            assert total == summed(now) - sum(at_reset.values())


def test_reset_is_not_seen_by_a_summary_lagging_behind_it(clock: ManualClock) -> None:
    world = World(seed=7, clock=clock, tasks_per_day=RATE)
    clock.advance(1200)
    then = world.visible_streams()
    clock.advance(600)
    with served(world) as (api, http):
        api.faults.summary_lag = 600
        api.faults.summary_reset_at = clock.now() - timedelta(seconds=300)
        body = http.get(SUMMARY).json()
        assert summary_credits(body)[0] == summed(then)
        assert body["last_credit_reset"] < iso(to_ms(START))


def test_by_model_shapes(clock: ManualClock) -> None:
    world = World(seed=7, clock=clock, tasks_per_day=RATE)
    with served(world) as (api, http):
        nested = http.get(SUMMARY).json()
        assert all(set(v) == {"neo_credits", "tasks"} for v in nested["by_model"].values())
        api.faults.summary_by_model = "flat"
        flat = http.get(SUMMARY).json()
        assert flat["by_model"] == {m: v["neo_credits"] for m, v in nested["by_model"].items()}
        assert list(flat) == list(nested)
        api.faults.summary_by_model = "omitted"
        omitted = http.get(SUMMARY).json()
        assert "by_model" not in omitted
        assert omitted == {k: v for k, v in nested.items() if k != "by_model"}


@pytest.mark.parametrize(
    "knobs", [{"summary_by_model": "deep"}, {"summary_lag": -1.0}, {"summary_lag": float("nan")}]
)
def test_bad_summary_knobs_are_refused(knobs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(knobs))):
        Faults(**knobs)
    faults = Faults()
    faults.summary_by_model = "deep"
    with pytest.raises(ValueError, match="summary_by_model"):
        faults.summary_shape({"by_model": {}})
    with pytest.raises(ValueError, match="hidden_share"):
        World(seed=7, clock=ManualClock(START), hidden_share=-1)


def test_hidden_runs_are_in_no_list_but_in_the_summary(clock: ManualClock) -> None:
    world = World(seed=7, clock=clock, tasks_per_day=RATE, hidden_share=3)
    plain = World(seed=7, clock=ManualClock(START), tasks_per_day=RATE)
    assert world.visible_streams() == plain.visible_streams()  # history is never hidden
    clock.advance(3 * 3600)
    for task_id in {s.task_id for s in world.hidden_streams()}:
        world.continue_task(task_id)  # so that some tasks mix hidden and listed runs
    clock.advance(3 * 3600)
    hidden, visible = world.hidden_streams(), world.visible_streams()
    hidden_ids = {s.stream_id for s in hidden}
    assert len(hidden) >= 5
    assert all(s.started_at > START for s in hidden)
    listed_tasks = {s.task_id for s in visible}
    hidden_tasks = {s.task_id for s in hidden}
    assert hidden_tasks & listed_tasks, "some tasks mix hidden and listed runs"
    assert hidden_tasks - listed_tasks, "some tasks have hidden runs only"
    with served(world) as (_, http):
        rows = fetch_all(http, STREAMS)  # checks total against the rows served
        assert {r["stream_id"] for r in rows} == {s.stream_id for s in visible}
        assert not hidden_ids & {r["stream_id"] for r in rows}
        for s in hidden:
            page = http.get(STREAMS, params={"stream_id": s.stream_id}).json()
            assert (page["data"], page["total"]) == ([], 0)
            by_task = fetch_all(http, STREAMS, task_id=s.task_id)
            assert not hidden_ids & {r["stream_id"] for r in by_task}
            details = http.get(f"/api/v1/tasks/{s.task_id}").json()
            assert s.stream_id in {d["stream_id"] for d in details["streams"]}
            one = http.get(f"{TASK_USAGES}/{s.task_id}")
            assert one.status_code == (200 if s.task_id in listed_tasks else 404)
            if s.task_id in listed_tasks:
                mine = [v for v in visible if v.task_id == s.task_id]
                assert money(one.json()["neo_credits"]) == summed(mine)
                assert one.json()["stream_count"] == len(mine)
        task_rows = {r["task_id"]: money(r["neo_credits"]) for r in fetch_all(http, TASK_USAGES)}
        assert set(task_rows) == listed_tasks
        assert sum(task_rows.values()) == summed(visible)
        total, models = summary_credits(http.get(SUMMARY).json())
        assert total - summed(visible) == summed(hidden) > 0
        assert models == by_model([*visible, *hidden])
