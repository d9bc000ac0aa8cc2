"""``python -m fewshot`` (also what ``torchrun -m fewshot`` runs)."""

import sys

from .cli import main

sys.exit(main())
