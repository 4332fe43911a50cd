"""`python -m gentk` (and `torchrun -m gentk`) runs the command line."""

from gentk.cli import main

raise SystemExit(main())
