"""``python -m requests_failover``: the same as the ``requests-failover`` command."""

import sys

from ._cli import main

sys.exit(main())
