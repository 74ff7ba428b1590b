"""``python -m bot`` does what the ``voicebot`` command does."""

from __future__ import annotations

import sys

from bot.cli import main

if __name__ == "__main__":
    sys.exit(main())
