"""``python -m glip`` runs the command line (also ``torchrun -m glip eval ...``)."""

import sys

from glip.cli import main

sys.exit(main())
