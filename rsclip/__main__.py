"""``python -m rsclip``: the ``rsclip`` command."""

import sys

from rsclip.app.cli import main

sys.exit(main())
