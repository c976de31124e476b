"""Copy a run's results.md into README.md between the bench markers.

    python -m heserve.benchmarks.readme [--results benchmarks/results] [--readme README.md]

Links to the plots are rewritten relative to the README, so they point into the results folder.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def splice(readme: str, results: str, link_prefix: str = "") -> str:
    """README text with `results` between the markers (image links prefixed with `link_prefix`)."""
    if START not in readme or END not in readme:
        raise ValueError(f"the README has no {START} ... {END} section")
    if link_prefix:
        results = re.sub(r"\]\(([\w.-]+\.png)\)", lambda m: f"]({link_prefix}{m.group(1)})", results)
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{results.strip()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m heserve.benchmarks.readme",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results", help="the run's folder")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    results = (args.results / "results.md").read_text()
    prefix = Path(os.path.relpath(args.results.resolve(), args.readme.resolve().parent)).as_posix() + "/"
    args.readme.write_text(splice(args.readme.read_text(), results, "" if prefix == "./" else prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
