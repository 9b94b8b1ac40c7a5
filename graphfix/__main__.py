"""`python -m graphfix` runs the command line."""

import sys

from graphfix.cli import main

sys.exit(main())
