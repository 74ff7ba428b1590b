"""Rules about asyncio that a review would not catch by reading one change."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_wait_for_in_the_bot() -> None:
    # On Python 3.11 asyncio.wait_for() returns the inner result and swallows a cancellation that lands
    # in the same loop iteration as the inner call finishing; a background loop that used it (the
    # console's tick) went on ticking after aclose() cancelled it, and the close waited for ever.
    # asyncio.timeout() passes the cancellation on. The one use left waits on a shielded future
    # while already cancelled (bot/store/database.py) and re-raises afterwards.
    found = []
    for folder in ("bot", "audio", "cogs"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line in path.read_text().splitlines():
                if re.search(r"\basyncio\.wait_for\(", line):
                    found.append(str(path.relative_to(ROOT)))
    assert found == ["bot/store/database.py"], found
