"""The lowest version of every runtime and build dependency that pyproject.toml allows,
as pins for pip (``name==version``), one a line.

tests/run.sh installs them in a virtualenv of their own and runs tests/smoke.py there:
a lower bound that does not work fails the check instead of a user's install.

    python tests/lowest.py > pins.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


def lowest(requirement: str) -> str:
    """``name==lower bound`` of a requirement; every dependency must declare one."""
    match = _REQUIREMENT.match(requirement)
    bound = re.search(r">=\s*([^,;\s]+)", match.group(2)) if match else None
    if match is None or bound is None:
        raise SystemExit(f"lowest.py: {requirement!r} declares no lower bound (>=)")
    return f"{match.group(1)}=={bound.group(1)}"


def main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = [*project["build-system"]["requires"], *project["project"]["dependencies"]]
    sys.stdout.write("".join(lowest(r) + "\n" for r in requirements))


if __name__ == "__main__":
    main()
