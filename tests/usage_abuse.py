"""What the usage abuse tests share (tests/test_usage_abuse.py, tests/test_usage_abuse_phone.py): a
clock the test moves, and the audio the fake Deepgram was paid for."""

from __future__ import annotations

import datetime as dt

from tests.fakes.deepgram_server import FakeDeepgram

__all__ = ["Clock", "paid_audio"]


class Clock:
    """A clock the test moves (epoch seconds, UTC)."""

    def __init__(self, when: str) -> None:
        self.now = self.at(when)

    @staticmethod
    def at(when: str) -> float:
        return dt.datetime.fromisoformat(when).replace(tzinfo=dt.timezone.utc).timestamp()

    def __call__(self) -> float:
        return self.now


def paid_audio(deepgram: FakeDeepgram) -> int:
    return sum(len(c.audio) for c in deepgram.connections)
