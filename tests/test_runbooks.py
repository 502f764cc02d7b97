"""docs/runbooks.md: a section for every alert, reached by the alert's runbook_url.

Each section says what the alert means, how to confirm it with a query, and what to do;
its queries are PromQL that promtool parses, reading the exporter's series through the
rule files' selector.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy_files import RULE_FILES, promql_selectors, rule_groups

ROOT = Path(__file__).resolve().parent.parent
RUNBOOKS = ROOT / "docs" / "runbooks.md"
CHART_VALUES = ROOT / "deploy" / "helm" / "neo-exporter" / "values.yaml"
SELECTOR = 'job="neo-exporter"'
PARTS = ("**Meaning.**", "**Confirm.**", "**Action.**")
# Queries that must not carry the selector: NeoExporterAbsent looks for the exporter under
# whatever job it is scraped as.
UNSELECTED_ON_PURPOSE = [("NeoExporterAbsent", "neo_exporter_build_info")]


def alerts() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in rule_groups(path)
        for rule in group["rules"]
        if "alert" in rule
    ]


def sections() -> dict[str, str]:
    """Each second-level heading of the runbooks and the text under it."""
    parts = re.split(r"^## (.+)$", RUNBOOKS.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def queries(section: str) -> list[str]:
    return re.findall(r"```promql\n(.*?)```", section, flags=re.DOTALL)


def runbook_page() -> str:
    page: str = yaml.safe_load(CHART_VALUES.read_text())["prometheusRule"]["runbookUrl"]
    return page


def test_every_alert_links_to_its_section() -> None:
    """runbook_url is the chart's runbook page, anchored at the alert's heading."""
    assert len(alerts()) >= 11
    for alert in alerts():
        name = alert["alert"]
        assert alert["annotations"]["runbook_url"] == f"{runbook_page()}#{name.lower()}"
        assert name in sections(), f"docs/runbooks.md has no section ## {name}"


def test_every_section_is_an_alert() -> None:
    assert sorted(sections()) == sorted(alert["alert"] for alert in alerts())


def test_every_section_says_what_it_means_how_to_confirm_and_what_to_do() -> None:
    for name, text in sections().items():
        positions = [text.find(part) for part in PARTS]
        assert -1 not in positions, f"{name} lacks one of {PARTS}"
        assert positions == sorted(positions), name
        confirm = text[positions[1] : positions[2]]
        assert queries(confirm), f"{name}: no ```promql query under Confirm"


def test_queries_read_the_exporter_through_the_rule_files_selector() -> None:
    """Raw series carry the selector the rule files use, so that swapping it is one step."""
    unselected = [
        (name, metric)
        for name, text in sections().items()
        for query in queries(text)
        for metric, matchers in promql_selectors(query)
        if ":" not in metric and not matchers.startswith("{" + SELECTOR)
    ]
    assert unselected == UNSELECTED_ON_PURPOSE


@pytest.mark.prometheus
def test_queries_parse_as_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"runbook:query_{index}:check", "expr": query}
        for index, query in enumerate(q for text in sections().values() for q in queries(text))
    ]
    path = tmp_path / "runbooks.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "runbooks", "rules": rules}]}))
    promtool = shutil.which("promtool")
    assert promtool is not None, "install the Debian package prometheus (tests/run.sh does)"
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
