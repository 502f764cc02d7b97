"""The error tree (exporter.errors): every class in it, drawn in its docstring, and the
one rule for failures that asking again cannot mend."""

from __future__ import annotations

import inspect

import pytest

from exporter import errors
from exporter.errors import (
    ApiError,
    ApiPayloadError,
    ApiStatusError,
    ApiTimeout,
    ApiTransportError,
    ExporterError,
)

CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, ExporterError) and cls.__module__ == errors.__name__
]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_is_drawn_in_the_tree_with_a_reason_of_its_own(cls: type) -> None:
    assert f" {cls.__name__} " in (errors.__doc__ or "") + " "
    reasons = [c.reason for c in CLASSES]
    assert reasons.count(cls.reason) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "lasting", "not_offered"),
    [
        (400, True, True), (401, False, False), (403, True, True), (404, True, True),
        (405, True, True), (408, False, False), (409, True, False), (410, True, False),
        (422, True, False), (429, False, False), (500, False, False), (503, False, False),
    ],
)  # fmt: skip
def test_what_asking_again_cannot_mend(status: int, lasting: bool, not_offered: bool) -> None:
    error = ApiStatusError("x", status=status)
    assert (error.lasting, error.not_offered) == (lasting, not_offered)


@pytest.mark.parametrize("cls", [ApiError, ApiTransportError, ApiTimeout, ApiPayloadError])
def test_no_answer_or_a_broken_one_may_mend(cls: type[ApiError]) -> None:
    assert not cls("x").lasting
