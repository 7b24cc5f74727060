"""``python -m licensing_client.cli``."""

from __future__ import annotations

import sys

from licensing_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
