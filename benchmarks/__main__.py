"""Run the benchmarks: `python -m heserve.benchmarks [--quick] [--models NAME,...] [--out DIR]`.

Starts the server (gunicorn, two workers) on a free loopback port, measures every workload
in one run (linear models and networks; single sample and batch; plaintext, TenSEAL's naive
API, the service's code path in process and the service over HTTP), shows a progress bar on
stderr, prints the markdown report and writes results.json, results.md and PNG plots to DIR
(benchmarks/results/ by default). --models measures only the models named (with the repetitions of the
full run, or of the quick one with --quick), e.g. `--models digits-cryptonets,digits-mlp3`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .suite import DEFAULT_OUT, FULL, LINEAR, NETWORKS, QUICK, run, subset, write


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
    parser.add_argument(
        "--models",
        default=None,
        metavar="NAME,...",
        help=f"only these models, comma-separated (of: {', '.join(LINEAR + NETWORKS)})",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.models is not None:
        try:
            settings = subset(settings, [m.strip() for m in args.models.split(",") if m.strip()])
        except ValueError as exc:
            parser.error(str(exc))
    command = (
        "python -m heserve.benchmarks"
        + (" --quick" if args.quick else "")
        + (f" --models {args.models}" if args.models is not None else "")
        + (f" --out {args.out}" if args.out else "")
    )
    result = run(settings, command=command)
    paths = write(result, args.out or DEFAULT_OUT)
    print(paths[1].read_text())
    print("wrote " + ", ".join(p.name for p in paths) + f" to {paths[0].parent}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
