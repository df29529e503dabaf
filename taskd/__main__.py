"""`python -m taskd` runs the command-line interface."""

from taskd.cli import main

raise SystemExit(main())
