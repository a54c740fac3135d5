"""``python -m quantfx``: the same command line as the ``quantfx`` script."""

import sys

from quantfx.cli import main

if __name__ == "__main__":
    sys.exit(main())
