"""Self-audit: the API's own usage totals against what the ledger counted, as a gap.

Every reconciliation takes a *sample*: the all-time credits the API's usage summary
reports (by model where its ``by_model`` gives credits), and the credits the ledger has
counted, by model, at the same poll. The *gap* is how much more the API's total grew
since the *reference* (the first samples) than the ledger's count did, plus the gap
*carried* over a reset of the API's total (a credit reset, a billing period).

The summary may lag or lead the usage lists by a poll, so its sample may belong with the
ledger's count of the poll before or after. Of those three *alignments*, the one under
which the gap is steadiest over the recent samples is taken (spend that moves between
polls makes the others jump): the *settled* gap, that of the last sample but one, whose
neighbours are both known. The gap is never folded into the counters: it only says how
far they are from the API's own totals.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

import structlog

from exporter.accounting import to_nano
from exporter.catalogue import NANO
from exporter.models import UsageSummary

log = structlog.get_logger(__name__)

AUDIT_KEY = "reconcile"  # ledger meta key of the stored ``Audit``
TOTAL = ""  # the model label of the whole gap, where the summary gives no credits by model
KEEP = 12  # recent samples kept: an hour at the default interval
ALIGNMENTS = (0, -1, 1)  # in order of preference when equally steady
# The API rounds what it reports; sums of rounded figures drift by this much at most.
ROUNDING = 1_000_000  # a thousandth of a credit, in nano-credits


class Sample(NamedTuple):
    """One reconciliation's figures, in nano-credits by model (``TOTAL``: all models)."""

    at: float  # unix time
    api: dict[str, int]
    counted: dict[str, int]


@dataclass(frozen=True)
class Audit:
    """What reconciliation keeps in the ledger between polls (and restarts)."""

    base: tuple[Sample, ...] = ()  # the reference and its neighbours: up to three
    recent: tuple[Sample, ...] = ()  # the last KEEP samples, the base's included
    carried: dict[str, int] = field(default_factory=dict)  # gap before the last reset
    reset_mark: str | None = None  # the API's last credit reset, as it gave it
    gap: dict[str, int] | None = None  # the settled gap, by model; None until known
    at: float | None = None  # when it was last reconciled
    alignment: int = 0  # the alignment of the settled gap
    # What runs that ended before the reference held, counted since (found late, by a
    # sweep say): spend before the comparison began, left out of the counters' side.
    before: dict[str, int] = field(default_factory=dict)

    @property
    def reference_at(self) -> float | None:
        """When the reference sample was taken; None before it was."""
        return self.base[1].at if len(self.base) > 1 else None

    def leaving_out(self, held: Mapping[str, int]) -> Audit:
        """The audit with ``held`` (nano-credits by model) left out of the counters'
        side from now on."""
        before = dict(self.before)
        for model, credits in held.items():
            before[model] = before.get(model, 0) + credits
        before[TOTAL] = before.get(TOTAL, 0) + sum(held.values())
        return replace(self, before=before)

    def dump(self) -> str:
        return json.dumps(
            {
                "base": [list(s) for s in self.base],
                "recent": [list(s) for s in self.recent],
                "carried": self.carried,
                "reset_mark": self.reset_mark,
                "gap": self.gap,
                "at": self.at,
                "alignment": self.alignment,
                "before": self.before,
            },
            sort_keys=True,
        )

    @classmethod
    def read(cls, text: str | None) -> Audit:
        """The stored audit; a fresh one for none, or for one that does not read (the
        comparison starts again from the next sample)."""
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            return cls(
                base=tuple(Sample(*s) for s in raw["base"]),
                recent=tuple(Sample(*s) for s in raw["recent"]),
                carried={str(k): int(v) for k, v in raw["carried"].items()},
                reset_mark=raw["reset_mark"],
                gap=None if raw["gap"] is None else {str(k): int(v) for k, v in raw["gap"].items()},
                at=raw["at"],
                alignment=int(raw["alignment"]),
                before={str(k): int(v) for k, v in raw.get("before", {}).items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls()


def credits_by_model(by_model: object, total: Decimal | None) -> dict[str, int] | None:
    """The summary's credits by model, in nano-credits, with their ``TOTAL``; None where
    the summary has no total. ``by_model`` maps a model to its credits, either as a
    number or as an object with ``neo_credits``; any other shape, a model without
    credits, or figures that do not add up to the total give the total alone."""
    if total is None:
        return None
    whole = to_nano(total)
    models: dict[str, int] = {}
    if isinstance(by_model, Mapping):
        for model, value in by_model.items():
            amount = _amount(value.get("neo_credits") if isinstance(value, Mapping) else value)
            if amount is None:
                models = {}
                break
            models[str(model)] = to_nano(amount)
    if not models or abs(sum(models.values()) - whole) > ROUNDING * max(1, len(models)):
        return {TOTAL: whole}
    return {**models, TOTAL: whole}


def _amount(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and amount >= 0 else None


def record(audit: Audit, sample: Sample, reset_mark: str | None) -> Audit:
    """The audit with ``sample`` taken in: a reset of the API's total (it went down, or
    its last credit reset moved) starts a new reference, carrying the gap settled so
    far; the settled gap is worked out again."""
    last = audit.recent[-1] if audit.recent else None
    moved = reset_mark is not None and audit.reset_mark not in (None, reset_mark)
    dropped = last is not None and sample.api[TOTAL] < last.api[TOTAL] - ROUNDING
    if moved or dropped:
        carried = audit.gap if audit.gap is not None else audit.carried
        audit = Audit(carried=dict(carried), gap=audit.gap, at=audit.at, before=audit.before)
    base = audit.base if len(audit.base) == 3 else (*audit.base, sample)
    recent = (*audit.recent, sample)[-KEEP:]
    settled = settle(base, recent, audit.carried)
    gap, alignment = settled if settled is not None else (audit.gap, audit.alignment)
    if gap is None and audit.carried:
        gap = dict(audit.carried)
    return Audit(
        base=base,
        recent=recent,
        carried=audit.carried,
        reset_mark=reset_mark if reset_mark is not None else audit.reset_mark,
        gap=gap,
        at=sample.at,
        alignment=alignment,
        before=audit.before,
    )


def settle(
    base: Sequence[Sample], recent: Sequence[Sample], carried: Mapping[str, int]
) -> tuple[dict[str, int], int] | None:
    """The settled gap by model and its alignment, once the reference has both its
    neighbours and a sample past it has its own; None before."""
    if len(base) < 3 or len(recent) < 3:
        return None
    steadiest = min(ALIGNMENTS, key=lambda a: _unsteadiness(base, recent, a))
    return gap_at(base, recent, len(recent) - 2, steadiest, carried), steadiest


def _unsteadiness(base: Sequence[Sample], recent: Sequence[Sample], alignment: int) -> int:
    """How much the total gap moves from sample to sample under ``alignment``."""
    gaps = [gap_at(base, recent, n, alignment, {})[TOTAL] for n in range(1, len(recent) - 1)]
    return sum(abs(b - a) for a, b in itertools.pairwise(gaps))


def gap_at(
    base: Sequence[Sample],
    recent: Sequence[Sample],
    n: int,
    alignment: int,
    carried: Mapping[str, int],
) -> dict[str, int]:
    """The gap of sample ``n`` of ``recent`` under ``alignment``, by model: what the API
    reports more than since the reference, less what the ledger counted more (both
    samples' counts taken ``alignment`` polls away), plus what was ``carried``."""
    api, api_ref = recent[n].api, base[1].api
    counted, counted_ref = recent[n + alignment].counted, base[1 + alignment].counted
    # By model only where both samples give credits by model (a model new since the
    # reference grew from nothing); else in all.
    models = set(api) | set(api_ref) if len(api) > 1 and len(api_ref) > 1 else {TOTAL}
    gap = {}
    for model in models | (set(carried) if len(models) > 1 else {TOTAL}):
        grown = api.get(model, 0) - api_ref.get(model, 0)
        count = _count(counted, model) - _count(counted_ref, model)
        gap[model] = grown - count + carried.get(model, 0)
    return gap


def _count(counted: Mapping[str, int], model: str) -> int:
    return counted.get(TOTAL, 0) if model == TOTAL else counted.get(model, 0)


def counted_by_model(
    counters: Mapping[tuple[str, tuple[str, ...]], int], name: str
) -> dict[str, int]:
    """The credits counted, by model and in all (``TOTAL``), from counters keyed by
    (family name, (model, ...labels))."""
    models: dict[str, int] = {}
    for (family, labels), value in counters.items():
        if family == name and labels:
            models[labels[0]] = models.get(labels[0], 0) + value
    return {**models, TOTAL: sum(models.values())}


def reconcile(
    stored: str | None, summary: UsageSummary, counted: dict[str, int], at: float
) -> dict[str, str]:
    """One reconciliation: the stored audit (ledger meta ``AUDIT_KEY``) with a sample of
    ``summary`` and ``counted`` (nano-credits by model, with their ``TOTAL``) taken in;
    the meta to write. A summary without a total changes nothing."""
    api = credits_by_model(summary.by_model, summary.total_neo_credits)
    if api is None:
        log.info("reconcile_skipped", reason="the usage summary has no total_neo_credits")
        return {}
    before = Audit.read(stored)
    reset = summary.last_credit_reset.isoformat() if summary.last_credit_reset else None
    ours = {model: credits - before.before.get(model, 0) for model, credits in counted.items()}
    audit = record(before, Sample(at, api, ours), reset)
    if audit.base and len(audit.base) == 1 and before.recent:
        log.warning(
            "reconcile_rebased", reason="the API's total went down or its credit reset "
            "moved: compared from now on, the gap so far carried",
            carried_credits=audit.carried.get(TOTAL, 0) / NANO,
        )  # fmt: skip
    if audit.gap is not None and audit.gap != before.gap:
        total = audit.gap.get(TOTAL, sum(v for k, v in audit.gap.items() if k != TOTAL))
        event = log.warning if abs(total) > ROUNDING else log.info
        event("reconcile_gap", credits=total / NANO, alignment=audit.alignment)
    return {AUDIT_KEY: audit.dump()}
