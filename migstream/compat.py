"""``python -m migstream.compat``: the analyze-migration drop-in."""

import sys

from .cli.compat import main

if __name__ == "__main__":
    sys.exit(main())
