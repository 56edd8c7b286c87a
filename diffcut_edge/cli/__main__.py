"""``python -m diffcut_edge.cli``: the same as the ``diffcut-edge`` command."""

import sys

from diffcut_edge.cli import main

sys.exit(main())
