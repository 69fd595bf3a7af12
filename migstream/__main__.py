"""``python -m migstream``."""

import sys

from migstream.cli.main import main

sys.exit(main())
