"""The state file's lock, and the check before each poll that file and lock are still ours."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from exporter.errors import StateError


def lock_state(path: Path) -> int:
    """Hold an exclusive lock beside the ledger for the life of the process.

    Two exporters writing one ledger would each overwrite the other's totals; the
    second one is refused. The kernel drops the lock when the process dies, kill -9
    included, so a crash never leaves a stale lock behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = Path(f"{path}.lock")
    handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise StateError(
            f"another neo-exporter is using the state file {path} (it holds {lock}): "
            "run one exporter per state file"
        ) from None
    return handle


def _file_id(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


class StateGuard:
    """Whether the state file and its lock are still the ones this process opened.

    SQLite keeps writing to a file deleted under it, and a lock file deleted with its
    directory no longer keeps a second exporter out: polls would report success while
    their counts go nowhere, and another exporter would count the window again. So
    each poll first checks that both are still in place and writable.
    """

    def __init__(self, path: Path, lock_handle: int) -> None:
        self.path = path
        self.lock = Path(f"{path}.lock")
        self._file = _file_id(os.stat(path))
        self._lock = _file_id(os.fstat(lock_handle))

    def check(self) -> None:
        """Raises StateError saying what changed, if anything did."""
        restart = (
            "counting stopped; put the file back (from a backup) and restart the exporter "
            "(a restart without it starts a new ledger from zero)"
        )
        for path, opened, what in ((self.path, self._file, "state file"),
                                   (self.lock, self._lock, "lock file")):  # fmt: skip
            try:
                now = _file_id(os.stat(path))
            except FileNotFoundError:
                raise StateError(f"the {what} {path} was deleted or moved: {restart}") from None
            except OSError as exc:
                raise StateError(f"cannot check the {what} {path}: {exc.strerror}") from None
            if now != opened:
                raise StateError(f"the {what} {path} was replaced by another file: {restart}")
        if not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)):
            raise StateError(
                f"the state file {self.path} cannot be written any more: give the exporter's "
                "user read and write access to it and to its directory"
            )
