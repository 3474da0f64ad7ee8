"""``python -m poolguard`` runs the ``poolguard`` command line (``cli.py``)."""

import sys

from poolguard.cli import main

sys.exit(main())
