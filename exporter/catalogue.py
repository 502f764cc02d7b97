"""The one catalogue of every metric the exporter serves, with its HELP text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

NANO = 1_000_000_000  # credits are kept as integer nano-credits: sums stay exact
MILLI = 1_000  # durations arrive in milliseconds and are served in seconds


@dataclass(frozen=True)
class MetricSpec:
    """One metric family: its exposition name (counters with ``_total``), kind and labels.

    ``key``: for the families the ledger stores (usage counters and histograms), the name
    it stores them under. It never changes, so that renaming the family (``name``) keeps
    its totals."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    scale: int = 1  # stored integer units per served unit
    group: Literal["usage", "tasks", "pinned", "account", "team", "audit", "self"] = "usage"
    key: str = ""


MS = ("model", "status")

# Counters derived from per-run usage, keyed by the ledger's field names.
CREDITS = MetricSpec(
    "neo_credits_total",
    "counter",
    "Neo credits spent by task runs (1 credit = 10 USD per the Neo API docs).",
    MS,
    NANO,
    key="credits",
)
STEPS = MetricSpec(
    "neo_steps_total", "counter", "Agent steps executed by task runs.", MS, key="steps"
)
TOOL_CALLS = MetricSpec(
    "neo_tool_calls_total", "counter", "Tool calls made by task runs.", MS, key="tool_calls"
)
AGENT_TRIGGERS = MetricSpec(
    "neo_agent_triggers_total",
    "counter",
    "Agent triggers made by task runs.",
    MS,
    key="agent_triggers",
)
RUNS = MetricSpec(
    "neo_task_runs_total",
    "counter",
    "Task runs (streams) that finished, by their status when first seen finished.",
    MS,
    key="runs",
)
LLM_TIME = MetricSpec(
    "neo_llm_time_seconds_total",
    "counter",
    "LLM inference time of task runs.",
    MS,
    MILLI,
    key="llm_ms",
)
TOOL_TIME = MetricSpec(
    "neo_tool_time_seconds_total",
    "counter",
    "Tool execution time of task runs.",
    MS,
    MILLI,
    key="tool_ms",
)
EXEC_TIME = MetricSpec(
    "neo_execution_time_seconds_total",
    "counter",
    "Total execution time of task runs.",
    MS,
    MILLI,
    key="exec_ms",
)
BYOK_LLM_COST = MetricSpec(
    "neo_byok_llm_cost_credits_total",
    "counter",
    "LLM cost of Bring-Your-Own-Key runs, in the base amount the API reports as credits.",
    MS,
    NANO,
    key="llm_cost",
)
BYOK_NEO_COST = MetricSpec(
    "neo_byok_neo_cost_credits_total",
    "counter",
    "Neo platform cost of Bring-Your-Own-Key runs after the account's neo_cost_rate.",
    MS,
    NANO,
    key="neo_cost",
)
AGENT_BREAKDOWN = MetricSpec(
    "neo_agent_triggers_by_agent_total",
    "counter",
    "Agent triggers by agent name, from each run's agent_breakdown.",
    ("model", "agent"),
    key="agent_triggers_by_agent",
)
TOOL_DURATION = MetricSpec(
    "neo_tool_call_duration_seconds",
    "histogram",
    "Duration of individual tool calls, one observation per tool_call_history entry.",
    ("model", "tool"),
    MILLI,
    key="tool_call_duration",
)
RUN_CREDITS = MetricSpec(
    "neo_task_run_credits",
    "histogram",
    "Credits per finished task run, observed once when the run is first seen finished.",
    MS,
    NANO,
    key="run_credits",
)
RUN_DURATION = MetricSpec(
    "neo_task_run_execution_seconds",
    "histogram",
    "Execution time per finished task run, observed once when the run is first seen finished.",
    MS,
    MILLI,
    key="run_execution",
)

# Field of the ledger's run record -> counter it feeds.
RUN_COUNTERS: dict[str, MetricSpec] = {
    "credits": CREDITS,
    "steps": STEPS,
    "tool_calls": TOOL_CALLS,
    "agent_triggers": AGENT_TRIGGERS,
    "llm_ms": LLM_TIME,
    "tool_ms": TOOL_TIME,
    "exec_ms": EXEC_TIME,
    "llm_cost": BYOK_LLM_COST,
    "neo_cost": BYOK_NEO_COST,
}
COUNTERS: tuple[MetricSpec, ...] = (*RUN_COUNTERS.values(), RUNS, AGENT_BREAKDOWN)
HISTOGRAMS: tuple[MetricSpec, ...] = (TOOL_DURATION, RUN_CREDITS, RUN_DURATION)

TASKS = MetricSpec(
    "neo_tasks",
    "gauge",
    "Tasks currently tracked (seen in the lookback window, pinned or still running), "
    "by model and current status.",
    MS,
    group="tasks",
)
TRACKED_TASKS = MetricSpec(
    "neo_tracked_tasks",
    "gauge",
    "Tasks currently tracked, of every model and status.",
    group="tasks",
)
PINNED = tuple(
    MetricSpec(f"neo_pinned_task_{field}", "gauge", text, ("task_id",), scale, group="pinned")
    for field, text, scale in (
        ("credits", "Credits of a pinned task (TASK_IDS), over all its runs.", NANO),
        ("steps", "Steps of a pinned task (TASK_IDS), over all its runs.", 1),
        ("tool_calls", "Tool calls of a pinned task (TASK_IDS), over all its runs.", 1),
        ("runs", "Runs (streams) of a pinned task (TASK_IDS).", 1),
    )
)
PINNED_INFO = MetricSpec(
    "neo_pinned_task_info",
    "gauge",
    "A pinned task's current model and status; the value is always 1.",
    ("task_id", "model", "status"),
    group="pinned",
)

# Account balance, from /usage/summary and /billing/credits; absent until first read.
ACCOUNT = tuple(
    MetricSpec(name, "gauge", text, group="account")
    for name, text in (
        ("neo_account_available_credits", "Credits available to the account or team."),
        ("neo_account_issued_credits", "Credits issued to the account or team."),
        (
            "neo_account_used_credits_since_reset",
            "Credits used since the last credit reset.",
        ),
        (
            "neo_account_credits_expiry_timestamp_seconds",
            "Unix time the account's credits expire.",
        ),
        (
            "neo_account_last_credit_reset_timestamp_seconds",
            "Unix time of the account's last credit reset.",
        ),
        ("neo_account_credits_expired", "1 if the account's credits have expired, else 0."),
    )
)
# Team view (TEAM_VIEW=true, team admins): per-member spend over the lookback window.
TEAM = tuple(
    MetricSpec(name, "gauge", text, ("member",), group="team")
    for name, text in (
        (
            "neo_team_member_window_credits",
            "Credits spent by a team member over the lookback window; member is a "
            "pseudonym unless EXPORT_EMAILS is set.",
        ),
        (
            "neo_team_member_window_tasks",
            "Tasks of a team member over the lookback window; member is a pseudonym "
            "unless EXPORT_EMAILS is set.",
        ),
    )
)

# Self-audit (exporter.reconcile): the API's own totals against the counters; absent
# until the first reconciliation (the usage summary answered).
UNRECONCILED = MetricSpec(
    "neo_exporter_unreconciled_credits",
    "gauge",
    "Credits the API's usage summary reports as spent since the exporter's first "
    "reconciliation that the counters do not hold (negative: counted beyond it), "
    "settled; by model where the summary gives credits by model, else one series "
    "with an empty model.",
    ("model",),
    scale=NANO,
    group="audit",
)
RECONCILED_AT = MetricSpec(
    "neo_exporter_last_reconciliation_timestamp_seconds",
    "gauge",
    "Unix time of the last reconciliation with the API's usage summary.",
    group="audit",
)
AUDIT = (UNRECONCILED, RECONCILED_AT)

# The exporter's own metrics (prometheus_client objects in exporter.selfmetrics).
SELF: tuple[MetricSpec, ...] = (
    MetricSpec(
        "neo_exporter_build_info",
        "gauge",
        "Version of the exporter; the value is always 1.",
        ("version", "python_version"),
        group="self",
    ),
    MetricSpec(
        "neo_exporter_last_poll_success",
        "gauge",
        "1 if the last poll of the Neo API succeeded, else 0.",
        group="self",
    ),
    MetricSpec(
        "neo_exporter_last_successful_poll_timestamp_seconds",
        "gauge",
        "Unix time the last successful poll finished.",
        group="self",
    ),
    MetricSpec(
        "neo_exporter_poll_duration_seconds",
        "histogram",
        "Wall time of polls of the Neo API.",
        group="self",
    ),
    MetricSpec(
        "neo_exporter_polls_total",
        "counter",
        "Polls of the Neo API by result.",
        ("result",),
        group="self",
    ),
    MetricSpec(
        "neo_exporter_api_requests_total",
        "counter",
        "Requests to the Neo API by endpoint and HTTP status code (or timeout/error).",
        ("endpoint", "code"),
        group="self",
    ),
    MetricSpec(
        "neo_exporter_errors_total",
        "counter",
        "Errors by reason (credentials_rejected, forbidden, timeout, invalid_row, "
        "invalid_field, paging_inconsistent, ...).",
        ("reason",),
        group="self",
    ),
    MetricSpec(
        "neo_exporter_http_connection_errors_total",
        "counter",
        "HTTP connections ended by network noise, by reason (tls_handshake, client_gone, "
        "timeout, malformed_request, accept_failed, evicted).",
        ("reason",),
        group="self",
    ),
    MetricSpec(
        "neo_exporter_ledger_runs",
        "gauge",
        "Task runs recorded in the ledger, counted or history.",
        group="self",
    ),
    MetricSpec(
        "neo_exporter_ledger_size_bytes", "gauge", "Size of the SQLite ledger file.", group="self"
    ),
    MetricSpec(
        "neo_exporter_sweep_requests_total",
        "counter",
        "Requests made by sweeps (usage pages, and task details for the runs they find): "
        "listings further back than the lookback window while the counters and the "
        "API's totals disagree.",
        group="self",
    ),
    MetricSpec(
        "neo_exporter_sweep_runs_found_total",
        "counter",
        "Runs that sweeps found and that count in full (started after the baseline).",
        group="self",
    ),
    MetricSpec(
        "neo_exporter_label_overflow_total",
        "counter",
        "Samples whose label value was folded into 'other' by the cardinality cap.",
        ("label",),
        group="self",
    ),
    MetricSpec(
        "neo_exporter_value_decreases_total",
        "counter",
        "Upstream values that went down; never subtracted from a counter.",
        ("field",),
        group="self",
    ),
)


def all_specs() -> tuple[MetricSpec, ...]:
    """Every metric family, in the order the README documents them."""
    return (
        *COUNTERS,
        *HISTOGRAMS,
        TASKS,
        TRACKED_TASKS,
        *PINNED,
        PINNED_INFO,
        *ACCOUNT,
        *TEAM,
        *AUDIT,
        *SELF,
    )


def markdown_table() -> str:
    """The README's metric table, generated here so that the two cannot drift apart."""
    lines = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
    for spec in all_specs():
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "–"
        lines.append(f"| `{spec.name}` | {spec.kind} | {labels} | {spec.help} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
