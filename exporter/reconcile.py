"""Self-audit: the API's own usage totals against what the ledger counted, as a gap.

Every reconciliation takes a *sample*: the all-time credits the API's usage summary
reports (by model where its ``by_model`` gives credits), and the credits the ledger has
counted, by model, at that poll, at the poll before and (kept at the next poll) at the
poll after. The *gap* is how much more the API's total grew since the *reference* (the
first whole sample) than the ledger's count did, plus the gap *carried* over a reset of
the API's total (a credit reset, a billing period).

The summary may lag or lead the usage lists by a poll, so its figures may belong with
the ledger's count of the poll before or after. Of those three *alignments*, the one
under which the gap is steadiest over the recent samples is taken (spend that moves
between polls makes the others jump): the *settled* gap, that of the latest sample whose
next poll is known. The gap is never folded into the counters: it only says how far they
are from the API's own totals.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

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
    """One reconciliation's figures, in nano-credits by model (``TOTAL``: all models):
    the API's, and the ledger's at that poll, the one before and the one after."""

    at: float  # unix time
    api: dict[str, int]
    counted: dict[str, int]
    before: dict[str, int] | None = None  # counted at the poll before (None: no poll)
    after: dict[str, int] | None = None  # counted at the poll after (None: not yet)

    def paired(self, alignment: int) -> dict[str, int]:
        """The ledger's count the API's figures are paired with under ``alignment``."""
        if alignment < 0:
            return self.before if self.before is not None else self.counted
        if alignment > 0:
            return self.after if self.after is not None else self.counted
        return self.counted


@dataclass(frozen=True)
class Audit:
    """What reconciliation keeps in the ledger between polls (and restarts)."""

    reference: Sample | None = None  # the first whole sample (its next poll known)
    recent: tuple[Sample, ...] = ()  # the last KEEP samples
    carried: dict[str, int] = field(default_factory=dict)  # gap before the last reset
    reset_mark: str | None = None  # the API's last credit reset, as it gave it
    gap: dict[str, int] | None = None  # the settled gap, by model; None until known
    at: float | None = None  # when it was last reconciled
    alignment: int = 0  # the alignment of the settled gap
    # What runs that ended before the reference held, counted since (found late, by a
    # sweep say): spend before the comparison began, left out of the counters' side.
    excluded: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] | None = None  # the count at the last poll (the next one's before)

    @property
    def reference_at(self) -> float | None:
        """When the reference sample was taken; None before it was."""
        return self.reference.at if self.reference is not None else None

    def leaving_out(self, held: Mapping[str, int]) -> Audit:
        """The audit with ``held`` (nano-credits by model) left out of the counters'
        side from now on."""
        excluded = dict(self.excluded)
        for model, credits in held.items():
            excluded[model] = excluded.get(model, 0) + credits
        excluded[TOTAL] = excluded.get(TOTAL, 0) + sum(held.values())
        return replace(self, excluded=excluded)

    def ours(self, counted: Mapping[str, int]) -> dict[str, int]:
        """``counted`` with what is left out taken off."""
        return {model: credits - self.excluded.get(model, 0) for model, credits in counted.items()}

    def dump(self) -> str:
        def sample(s: Sample | None) -> list[Any] | None:
            return None if s is None else list(s)

        return json.dumps(
            {
                "reference": sample(self.reference),
                "recent": [sample(s) for s in self.recent],
                "carried": self.carried,
                "reset_mark": self.reset_mark,
                "gap": self.gap,
                "at": self.at,
                "alignment": self.alignment,
                "excluded": self.excluded,
                "last": self.last,
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
                reference=_sample(raw["reference"]),
                recent=tuple(Sample(*s) for s in raw["recent"]),
                carried=_figures(raw["carried"]),
                reset_mark=raw["reset_mark"],
                gap=None if raw["gap"] is None else _figures(raw["gap"]),
                at=raw["at"],
                alignment=int(raw["alignment"]),
                excluded=_figures(raw["excluded"]),
                last=None if raw["last"] is None else _figures(raw["last"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls()


def _sample(raw: list[Any] | None) -> Sample | None:
    return None if raw is None else Sample(*raw)


def _figures(raw: Mapping[str, Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in raw.items()}


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
    """The audit with ``sample`` taken in (its ``before``, when not given, the count at
    the audit's last poll): a reset of the API's total (it went down, or its last credit
    reset moved) starts a new reference, carrying the gap settled so far."""
    if sample.before is None and audit.last is not None:
        sample = sample._replace(before=audit.last)
    if audit.recent and audit.recent[-1].after is None:  # this is its next poll
        audit = noted(audit, sample.counted)
    last = audit.recent[-1] if audit.recent else None
    moved = reset_mark is not None and audit.reset_mark not in (None, reset_mark)
    dropped = last is not None and sample.api[TOTAL] < last.api[TOTAL] - ROUNDING
    if moved or dropped:
        carried = audit.gap if audit.gap is not None else audit.carried
        audit = Audit(carried=dict(carried), gap=audit.gap, at=audit.at, excluded=audit.excluded)
    audit = replace(
        audit,
        recent=(*audit.recent, sample)[-KEEP:],
        reset_mark=reset_mark if reset_mark is not None else audit.reset_mark,
        at=sample.at,
        last=sample.counted,
    )
    return settled(audit)


def noted(audit: Audit, counted: dict[str, int]) -> Audit:
    """The audit once a poll without a reconciliation counted ``counted``: the latest
    sample's next poll, if it had none yet."""
    recent = audit.recent
    if recent and recent[-1].after is None:
        recent = (*recent[:-1], recent[-1]._replace(after=counted))
        return settled(replace(audit, recent=recent, last=counted))
    return replace(audit, last=counted)


def settled(audit: Audit) -> Audit:
    """The audit with its reference (the first whole sample: the polls before and after
    it known) and its settled gap: that of the latest whole sample, under the steadiest
    alignment."""
    whole = [s for s in audit.recent if s.after is not None and s.before is not None]
    reference = audit.reference
    if reference is None and whole:
        reference = whole[0]
    if reference is None:
        return replace(audit, gap=dict(audit.carried) if audit.carried else audit.gap)
    since = [s for s in whole if s.at >= reference.at] or [reference]
    steadiest = min(ALIGNMENTS, key=lambda a: _unsteadiness(reference, since, a))
    gap = gap_at(reference, since[-1], steadiest, audit.carried)
    return replace(audit, reference=reference, gap=gap, alignment=steadiest)


def _unsteadiness(reference: Sample, samples: Sequence[Sample], alignment: int) -> int:
    """How much the total gap moves from sample to sample under ``alignment``."""
    gaps = [gap_at(reference, s, alignment, {})[TOTAL] for s in samples]
    return sum(abs(b - a) for a, b in itertools.pairwise(gaps))


def gap_at(
    reference: Sample, sample: Sample, alignment: int, carried: Mapping[str, int]
) -> dict[str, int]:
    """The gap of ``sample`` under ``alignment``, by model: what the API reports more
    than at the reference, less what the ledger counted more (both counts taken
    ``alignment`` polls away), plus what was ``carried``."""
    api, api_ref = sample.api, reference.api
    counted, counted_ref = sample.paired(alignment), reference.paired(alignment)
    # By model only where both samples give credits by model, or the reference nothing
    # at all (a model new since the reference grew from nothing); else in all.
    by_model = len(api) > 1 and (len(api_ref) > 1 or api_ref.get(TOTAL) == 0)
    models = set(api) | set(api_ref) if by_model else {TOTAL}
    gap = {}
    for model in models | (set(carried) if len(models) > 1 else {TOTAL}):
        grown = api.get(model, 0) - api_ref.get(model, 0)
        count = counted.get(model, 0) - counted_ref.get(model, 0)
        gap[model] = grown - count + carried.get(model, 0)
    return gap


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
    stored: str | None, summary: UsageSummary | None, counted: dict[str, int], at: float
) -> dict[str, str]:
    """A poll's part in the audit: with the ``summary`` read at it, a sample taken in;
    without, the poll's count noted as the latest sample's next poll. ``stored``: the
    audit as the ledger holds it (meta ``AUDIT_KEY``); ``counted``: nano-credits by
    model, with their ``TOTAL``. Returns the meta to write."""
    before = Audit.read(stored)
    ours = before.ours(counted)
    if summary is None:
        if stored is None:
            return {}  # no summary read yet: nothing to note
        audit = noted(before, ours)
    else:
        api = credits_by_model(summary.by_model, summary.total_neo_credits)
        if api is None:
            log.info("reconcile_skipped", reason="the usage summary has no total_neo_credits")
            return {AUDIT_KEY: replace(before, last=ours).dump()}
        reset = summary.last_credit_reset.isoformat() if summary.last_credit_reset else None
        audit = record(before, Sample(at, api, ours), reset)
        if audit.reference is None and audit.carried and before.reference is not None:
            log.warning(
                "reconcile_rebased", reason="the API's total went down or its credit reset "
                "moved: compared from now on, the gap so far carried",
                carried_credits=audit.carried.get(TOTAL, 0) / NANO,
            )  # fmt: skip
    if audit.gap is not None and audit.gap != before.gap:
        total = audit.gap.get(TOTAL, 0)
        event = log.warning if abs(total) > ROUNDING else log.info
        event("reconcile_gap", credits=total / NANO, alignment=audit.alignment)
    return {AUDIT_KEY: audit.dump()}
