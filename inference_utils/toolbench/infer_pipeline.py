"""``python -m inference_utils.toolbench.infer_pipeline``: an earlier path of
:mod:`inference_utils.static.infer`."""

import sys

from inference_utils.static.infer import main

if __name__ == "__main__":
    sys.exit(main())
