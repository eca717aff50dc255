"""`python -m aya_train ...` (also what `accelerate launch -m aya_train` runs on every rank)."""

import sys

from aya_train.cli import main

sys.exit(main())
