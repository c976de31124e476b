"""Rebuild the shipped model artifacts: `python -m heserve.models [--out DIR]`."""

import argparse
from pathlib import Path

from heserve.models.recipes import MODELS_DIR, build_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="directory to write artifacts into")
    args = parser.parse_args()
    for report in build_all(args.out):
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in report.items()))


if __name__ == "__main__":
    main()
