"""`python -m distillery_cli ...`: the `distillery` command without its console script."""

import sys

from distillery_cli.cli import main

sys.exit(main())
