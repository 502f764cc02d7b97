"""The deployment files the tests read: Prometheus rules and the Grafana dashboard."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULE_FILES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.rules.yml"))
DASHBOARD = ROOT / "grafana" / "neo-exporter-dashboard.json"
# Values the dashboard's template variables take when a test evaluates its queries.
TEMPLATE_VALUES = {
    "${datasource}": "prometheus",
    "$datasource": "prometheus",
    "${model}": ".+",
    "$model": ".+",
    "$__rate_interval": "2m",
    "$__interval": "1m",
    "$__range": "1h",
}


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def rule_groups(path: Path) -> list[dict[str, Any]]:
    groups = load_yaml(path)["groups"]
    assert isinstance(groups, list)
    return groups


def all_rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in rule_groups(path) for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as handle:
        loaded: dict[str, Any] = json.load(handle)
    return loaded


def dashboard_panels(panels: list[dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard()["panels"] if panels is None else panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def substitute_template_variables(expr: str) -> str:
    for variable in sorted(TEMPLATE_VALUES, key=len, reverse=True):
        expr = expr.replace(variable, TEMPLATE_VALUES[variable])
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard query, template variables substituted.

    $model becomes ".+" (the variable's "All" value, used inside =~ matchers),
    $__rate_interval 2m (4 x the 30 s scrape interval), $__interval 1m, $__range 1h,
    so each query can be sent to a real Prometheus as it stands.
    """
    return [
        (panel["title"], substitute_template_variables(target["expr"]))
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
