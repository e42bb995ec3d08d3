"""``python -m recsys``: the same as the `recsys` console script."""

import sys

from recsys.cli import main

sys.exit(main())
