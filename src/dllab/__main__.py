"""``python -m dllab`` = the ``dllab`` command (torchrun starts it this way: ``torchrun ... -m dllab run``)."""
import sys

from dllab.cli.main import main

sys.exit(main())
