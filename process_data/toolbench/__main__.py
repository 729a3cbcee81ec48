"""``python -m process_data.toolbench``: see :mod:`process_data.toolbench.cli`."""

import sys

from process_data.toolbench.cli import main

sys.exit(main())
