"""`python -m client`: the command line of the client SDK (see client/cli.py, or `python -m client --help`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
