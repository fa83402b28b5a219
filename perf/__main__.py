"""``python -m perf`` (from the repository root): see perf/cli.py."""
import sys

from .cli import main

sys.exit(main())
