"""`python -m dln` is the `dln` command."""

from dln.runtime.cli import main

raise SystemExit(main())
