"""``python -m tune.report SWEEP_DIR ...``: the same as ``jigclu report``."""

import sys

from tune.report.cli import main

sys.exit(main(sys.argv[1:]))
