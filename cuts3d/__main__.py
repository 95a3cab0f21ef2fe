"""``python -m cuts3d`` is the same as the ``cuts3d`` command."""

import sys

from cuts3d.cli import main

sys.exit(main())
