"""Golden transcripts of the poll: what each poll asked the API and wrote to the ledger.

A transcript is one JSON line per poll: the requests made (sorted: the fetch pool
answers in any order), and the poll's ``PollChanges`` as committed (the runs and task
records written, the meta written and the counter and histogram deltas). Recorded from
the code as it stood before the poll was reshaped (issue 24), they hold the reshaped
poll to the same behaviour, request for request and write for write.

    GOLDEN_UPDATE=1 .venv/bin/python -m pytest tests/test_poll_golden.py

writes them anew: only for a change of behaviour that is meant, said in its commit.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from exporter.ledger import PollChanges
from tests.rig import Rig

GOLDEN = Path(__file__).parent / "golden"


def _request(line: str) -> str:
    method, _, target = line.partition(" ")
    split = urlsplit(target)
    query = "&".join(f"{k}={v}" for k, v in sorted(parse_qsl(split.query)))
    return f"{method} {split.path}" + (f"?{query}" if query else "")


def _run(state: Any) -> dict[str, Any]:
    fields = dataclasses.asdict(state)
    if state.unconfirmed is not None:
        fields["unconfirmed"] = list(state.unconfirmed)
    return fields


def _changes(changes: PollChanges) -> dict[str, Any]:
    deltas = changes.deltas
    return {
        "runs": sorted((_run(s) for s in changes.runs), key=lambda r: r["stream_id"]),
        "tasks": {t: list(r) for t, r in sorted(changes.tasks.items())},
        "meta": dict(sorted(changes.meta.items())),
        "counters": sorted([n, list(labels), v] for (n, labels), v in deltas.counters.items()),
        "observed": sorted(
            [n, list(labels), sorted(series.values), sorted(set(series.tasks))]
            for (n, labels), series in deltas.observed.items()
        ),
        "decreases": dict(sorted(deltas.decreases.items())),
    }


class Recorder:
    """Records each poll of ``rig`` (its API requests and committed changes)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.polls: list[dict[str, Any]] = []
        rig.api.journal = []

    def attach(self) -> None:
        """Wrap the rig's ledger (after ``rig.open()``) so its commits are recorded."""
        ledger = self.rig.ledger
        assert ledger is not None
        commit: Callable[[PollChanges], dict[str, int]] = ledger.commit

        def recording(changes: PollChanges) -> dict[str, int]:
            self.polls.append({"changes": _changes(changes)})
            return commit(changes)

        ledger.commit = recording  # type: ignore[method-assign]

    def poll(self) -> None:
        poller = self.rig.poller
        api = self.rig.api
        assert poller is not None
        assert api.journal is not None
        api.journal.clear()
        before = len(self.polls)
        report = poller.poll_safely()
        if len(self.polls) == before:  # a failed poll commits nothing
            self.polls.append({"changes": None})
        self.polls[-1]["ok"] = report is not None
        self.polls[-1]["requests"] = sorted(map(_request, api.journal))

    def lines(self) -> Iterator[str]:
        for number, entry in enumerate(self.polls):
            yield json.dumps({"poll": number, **entry}, sort_keys=True)


def load(name: str) -> list[str]:
    with gzip.open(GOLDEN / f"{name}.jsonl.gz", "rt") as stored:
        return stored.read().splitlines()


def save(name: str, lines: list[str]) -> None:
    GOLDEN.mkdir(exist_ok=True)
    # mtime 0: the same transcript gives the same bytes, so git sees no change.
    with (
        open(GOLDEN / f"{name}.jsonl.gz", "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as stored,
    ):
        stored.write(("\n".join(lines) + "\n").encode())


def first_difference(expected: list[str], got: list[str]) -> str:
    """A readable account of where two transcripts first part."""
    for number, (want, have) in enumerate(zip(expected, got, strict=False)):
        if want == have:
            continue
        old, new = json.loads(want), json.loads(have)
        for section in ("ok", "requests", "changes"):
            if old.get(section) == new.get(section):
                continue
            if section != "changes" or old[section] is None or new[section] is None:
                a, b = old.get(section), new.get(section)
                return f"poll {number}, {section}: {a!r:.2000} != {b!r:.2000}"
            for part in old[section]:
                if old[section][part] != new[section][part]:
                    a, b = old[section][part], new[section][part]
                    if isinstance(a, list) and isinstance(b, list):
                        extra = [x for x in b if x not in a][:3]
                        missing = [x for x in a if x not in b][:3]
                        return f"poll {number}, {part}: missing {missing!r:.2000}, " + (
                            f"extra {extra!r:.2000}"
                        )
                    return f"poll {number}, {part}: {a!r:.2000} != {b!r:.2000}"
    return f"{len(expected)} polls expected, {len(got)} recorded"
