"""``python -m cnnlab`` is the ``cnnlab`` command (torchrun launches it this way)."""

import sys

from cnnlab.cli import main

sys.exit(main())
