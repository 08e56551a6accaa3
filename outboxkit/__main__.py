"""``python -m outboxkit`` is the ``outboxkit`` command."""

import sys

from outboxkit.cli import main

sys.exit(main())
