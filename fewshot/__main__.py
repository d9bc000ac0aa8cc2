"""``python -m fewshot`` (also what ``torchrun -m fewshot`` runs)."""

import os
import sys

from .cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A torchrun rank has left its process group and written everything (atomically) by now. Exiting without
    # C++ static destructors avoids an abort seen at teardown ("terminate called without an active exception",
    # a joinable thread of torch's distributed runtime destroyed after Python finished) in about 1 run in 4.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
