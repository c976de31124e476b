"""Run the benchmarks: `python -m heserve.benchmarks [--quick] [--out DIR]`.

Starts the server (gunicorn, two workers) on a free loopback port, measures every workload
in one run (linear models and networks; single sample and batch; plaintext, TenSEAL's naive
API, the service's code path in process and the service over HTTP), shows a progress bar on
stderr, prints the markdown report and writes results.json, results.md and PNG plots to DIR
(benchmarks/results/ by default).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .suite import DEFAULT_OUT, FULL, QUICK, run, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m heserve.benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="about a minute, for CI: fewer repetitions, smaller batches, networks: digits-mlp only",
    )
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="results folder (default: benchmarks/results/)"
    )
    args = parser.parse_args(argv)
    command = (
        "python -m heserve.benchmarks" + (" --quick" if args.quick else "") + (f" --out {args.out}" if args.out else "")
    )
    result = run(QUICK if args.quick else FULL, command=command)
    paths = write(result, args.out or DEFAULT_OUT)
    print(paths[1].read_text())
    print("wrote " + ", ".join(p.name for p in paths) + f" to {paths[0].parent}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
