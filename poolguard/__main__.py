"""``python -m poolguard`` runs the ``poolguard`` command line."""

import sys

from poolguard.cli import main

sys.exit(main())
