"""``python -m pebslab.fuzz``: see pebslab/fuzz/cli.py."""

import sys

from .cli import main

sys.exit(main())
