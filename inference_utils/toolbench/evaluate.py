"""``python -m inference_utils.toolbench.evaluate``: an earlier path of
:mod:`inference_utils.static.evaluate`."""

import sys

from inference_utils.static.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
