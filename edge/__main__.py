"""``python -m edge``: the same as the ``edge`` console script."""

import sys

from edge.cli import main

sys.exit(main())
