"""``python -m prunus`` is the same as the ``prunus`` command."""

import sys

from prunus.cli import main

sys.exit(main())
