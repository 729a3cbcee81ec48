"""``python -m inference_utils.toolbench.run_agent``: an earlier path of
:mod:`inference_utils.agent.run`."""

import sys

from inference_utils.agent.run import main

if __name__ == "__main__":
    sys.exit(main())
