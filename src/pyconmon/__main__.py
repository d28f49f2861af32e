"""``python -m pyconmon ARGS``: the same as the installed ``conmon``."""

import sys

from pyconmon.cli import main

sys.exit(main(sys.argv[1:]))
