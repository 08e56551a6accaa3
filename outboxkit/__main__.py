"""``python -m outboxkit`` is the ``outboxkit`` command."""

import sys

from outboxkit.cli.main import main

sys.exit(main())
