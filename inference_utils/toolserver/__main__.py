import sys

from inference_utils.toolserver.cli import main

sys.exit(main())
