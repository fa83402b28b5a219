"""``python -m meshalloc``: see meshalloc.cli."""

import sys

from meshalloc.cli import main

if __name__ == "__main__":
    sys.exit(main())
