"""``python -m migstream.compat``: the analyze-migration drop-in."""

import sys

from migstream.cli.analyze_migration import main

if __name__ == "__main__":
    sys.exit(main())
