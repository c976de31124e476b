"""`heserve`: the command line of the client SDK (see client/cli/, or `heserve --help`)."""

from __future__ import annotations

import sys

from heserve.client.cli import main

if __name__ == "__main__":
    sys.exit(main())
