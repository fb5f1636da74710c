"""`python -m quantize …` is `quantserve quantize …`."""

import sys

from serving.cli import main

sys.exit(main(["quantize", *sys.argv[1:]]))
