"""Copy benchmarks/results/results.md into README.md between the bench markers."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def main() -> int:
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "benchmarks" / "results" / "results.md").read_text().strip()
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    (ROOT / "README.md").write_text(f"{head}{START}\n{results}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
