"""``python -m perf`` (from the repository root): see perf/runner.py."""
import sys

from .runner import main

sys.exit(main())
