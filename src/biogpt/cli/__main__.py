"""`python -m biogpt.cli ...`, the same as the `biogpt` command."""

import sys

from biogpt.cli import main

sys.exit(main())
