"""`python -m gentk` (and `torchrun -m gentk`) runs the command line."""

from gentk.process import main

raise SystemExit(main())
