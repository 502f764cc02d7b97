"""The deployment files the tests read: Prometheus rules and the Grafana dashboard."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
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
    "${job}": ".*",
    "$job": ".*",
    "${instance}": ".*",
    "$instance": ".*",
    "$__rate_interval": "2m",
    "$__interval": "1m",
    "$__range": "1h",
}


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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

    $model becomes ".+" (the variable's "All" value, used inside =~ matchers), $job and
    $instance ".*" (theirs: backfilled series have neither label),
    $__rate_interval 2m (4 x the 30 s scrape interval), $__interval 1m, $__range 1h,
    so each query can be sent to a real Prometheus as it stands.
    """
    return [
        (panel["title"], substitute_template_variables(target["expr"]))
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


# --- PromQL: just enough parsing to find the series a query reads ----------------------

_TOKEN = re.compile(
    r"""
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<matchers>\{(?:"(?:[^"\\]|\\.)*"|[^}"])*\})
    | (?P<range>\[[^\]]*\])
    | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)
    | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][\w:]*)
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE,
)
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"offset", "bool", "inf", "nan", "atan2"}
)
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


def promql_selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matchers text) of every series selector in a PromQL expression."""
    tokens = [
        (m.lastgroup, m.group())
        for m in _TOKEN.finditer(expr)
        if m.lastgroup not in ("space", "string")
    ]
    selectors: list[tuple[str, str]] = []
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else (None, "")
        if kind == "ident" and text.lower() in _LABEL_LISTS and following[1] == "(":
            # A label list such as "by (model, le)": its names are labels, not metrics.
            while index < len(tokens) and tokens[index][1] != ")":
                index += 1
        elif (
            kind == "ident"
            and text.lower() not in _KEYWORDS
            # Functions are followed by "(", aggregations possibly by "by (...)" first.
            and following[1] != "("
            and following[1].lower() not in ("by", "without")
        ):
            matchers = following[1] if following[0] == "matchers" else ""
            selectors.append((text, matchers))
        index += 1
    return selectors


def promql_metric_names(expr: str) -> set[str]:
    return {name for name, _ in promql_selectors(expr)}
