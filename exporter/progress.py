"""Progress on a terminal for the backfill: rows fetched of the API's total, families written."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO


def terminal_progress(stream: TextIO = sys.stderr) -> Callable[[int, int], None]:
    """A one-line progress bar when ``stream`` is a terminal, silence otherwise."""
    if not stream.isatty():
        return lambda done, total: None

    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} families")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show


def fetch_progress(stream: TextIO = sys.stderr) -> Callable[[int, int | None], None]:
    """Rows fetched out of the API's ``total``, on one line, when ``stream`` is a terminal."""
    if not stream.isatty():
        return lambda rows, total: None

    def show(rows: int, total: int | None) -> None:
        of = "" if total is None else f" of {total:,}"
        stream.write(f"\rfetching usage: {rows:,}{of} rows")
        stream.flush()

    return show
