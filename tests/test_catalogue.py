"""The metric catalogue: names follow Prometheus conventions, and the README matches it."""

from __future__ import annotations

import re
from pathlib import Path

from exporter import catalogue
from exporter.catalogue import all_specs, markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_metric_table_is_the_catalogue() -> None:
    text = README.read_text()
    found = re.search(r"<!-- metrics:start -->\n(.*)\n<!-- metrics:end -->", text, re.S)
    assert found, "README lacks the metrics table markers"
    assert found.group(1) == markdown_table(), "run: python -m exporter.catalogue"


def test_names_follow_conventions() -> None:
    names = [spec.name for spec in all_specs()]
    assert len(names) == len(set(names))
    for spec in all_specs():
        assert re.fullmatch(r"neo_[a-z_]+", spec.name), spec.name
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        assert "task_id" not in spec.labels or spec.group == "pinned", spec.name
        assert "email" not in spec.labels, spec.name
        assert spec.help.endswith("."), spec.name


def test_every_stored_family_has_a_key_of_its_own() -> None:
    """The ledger stores counters and histograms under MetricSpec.key: each has one,
    and no two share it."""
    keys = [spec.key for spec in (*catalogue.COUNTERS, *catalogue.HISTOGRAMS)]
    assert all(keys)
    assert len(set(keys)) == len(keys)
