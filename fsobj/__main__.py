"""``python -m fsobj``: the command line."""

import sys

from fsobj.cli import main

sys.exit(main())
