"""``python -m bench`` is the same as ``profl``."""

import sys

from bench.cli import main

sys.exit(main())
