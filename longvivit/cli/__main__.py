"""`python -m longvivit.cli COMMAND ...` (what the deepspeed launcher runs: --module longvivit.cli)."""
import sys

from longvivit.cli import main

sys.exit(main())
