"""`python -m chains ...`; see `chains.cli`."""

import sys

from chains.cli import main

sys.exit(main())
