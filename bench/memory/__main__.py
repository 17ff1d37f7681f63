"""`python -m bench.memory`: see `bench.memory.cli`."""

from .cli import main

raise SystemExit(main())
