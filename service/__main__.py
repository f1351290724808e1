"""``python -m service``: see :mod:`service.server`."""

import sys

from service.server import main

sys.exit(main())
