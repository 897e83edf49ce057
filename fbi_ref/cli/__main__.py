"""`python -m fbi_ref.cli ...`: the same as the `fbi-ref` program."""
import sys

from fbi_ref.cli import console_main

sys.exit(console_main())
