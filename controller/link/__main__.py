"""``python -m controller.link serve ARTIFACT`` / ``python -m controller.link sim-robot ...``."""

import sys

from controller.link.cli import main

sys.exit(main())
