"""``python -m interp.cli``: the ``interp`` command."""

import sys

from . import main

sys.exit(main())
