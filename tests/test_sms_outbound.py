"""REST sends through the real twilio SDK against the loopback fake Twilio API."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from bot.sms.outbound import SendOutcome, TwilioSender, backoff_delay, classify_send_error
from tests.fakes.twilio_server import FakeTwilio

SID = "AC" + "0" * 32
TOKEN = "test-auth-token-123"
FROM = "+15550001111"
TO = "+15552223333"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(SID, TOKEN) as server:
        yield server


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_sender(fake: FakeTwilio, sleeps: Sleeps, *, token: str = TOKEN, **kw: object) -> TwilioSender:
    return TwilioSender(SID, token, FROM, api_base=fake.base_url, status_callback="https://bot.example/twilio/status",
                        sleep=sleeps, rand=lambda: 0.5, **kw)  # type: ignore[arg-type]


async def test_send_reaches_fake_with_real_wire_format(fake: FakeTwilio) -> None:
    sender = make_sender(fake, Sleeps())
    try:
        result = await sender.send(TO, "hello there")
    finally:
        await sender.aclose()
    assert result.ok and result.sid and result.sid.startswith("SM") and result.attempts == 1
    [sent] = fake.sent
    assert (sent.to, sent.from_, sent.body) == (TO, FROM, "hello there")
    assert sent.status_callback == "https://bot.example/twilio/status"
    assert sent.user_agent.startswith("twilio-python/")


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (400, 21610, SendOutcome.OPTED_OUT),
        (400, 21608, SendOutcome.UNVERIFIED),
        (400, 21211, SendOutcome.INVALID_NUMBER),
        (400, 21602, SendOutcome.REJECTED),
    ],
)
async def test_final_errors_are_not_retried(fake: FakeTwilio, status: int, code: int, outcome: SendOutcome) -> None:
    sleeps = Sleeps()
    fake.fail_next(status, code)
    sender = make_sender(fake, sleeps)
    try:
        result = await sender.send(TO, "hi")
    finally:
        await sender.aclose()
    assert (result.outcome, result.code, result.status, result.attempts) == (outcome, code, status, 1)
    assert fake.attempts == 1 and sleeps.delays == [] and fake.sent == []


async def test_wrong_credentials_are_auth_failed_and_secret_free(fake: FakeTwilio) -> None:
    sender = make_sender(fake, Sleeps(), token="wrong-token-456")
    try:
        result = await sender.send(TO, "hi")
    finally:
        await sender.aclose()
    assert result.outcome is SendOutcome.AUTH_FAILED and result.attempts == 1
    assert fake.unauthorized == 1
    assert "wrong-token-456" not in repr(result) and "wrong-token-456" not in repr(sender)


@pytest.mark.parametrize(("status", "code"), [(429, 20429), (503, None), (500, 20500)])
async def test_retryable_errors_back_off_then_succeed(fake: FakeTwilio, status: int, code: int | None) -> None:
    sleeps = Sleeps()
    fake.fail_next(status, code, times=2)
    sender = make_sender(fake, sleeps)
    try:
        result = await sender.send(TO, "hi")
    finally:
        await sender.aclose()
    assert result.ok and result.attempts == 3
    assert sleeps.delays == [0.25, 0.5]  # rand=0.5 of 0.5 s, 1 s
    assert len(fake.sent) == 1


async def test_retries_are_bounded(fake: FakeTwilio, caplog: pytest.LogCaptureFixture) -> None:
    sleeps = Sleeps()
    fake.fail_next(502, raw="<html>bad gateway</html>", times=10)
    sender = make_sender(fake, sleeps, max_attempts=3)
    with caplog.at_level(logging.INFO, logger="bot.sms.outbound"):
        try:
            result = await sender.send(TO, "hi")
        finally:
            await sender.aclose()
    assert result.outcome is SendOutcome.UNAVAILABLE and result.attempts == 3 and result.status == 502
    assert fake.attempts == 3 and len(sleeps.delays) == 2
    assert len([r for r in caplog.records if r.name == "bot.sms.outbound"]) == 2  # one line per retry


async def test_connection_refused_is_unavailable() -> None:
    sleeps = Sleeps()
    async with FakeTwilio(SID, TOKEN) as server:
        base = server.base_url
    sender = TwilioSender(SID, TOKEN, FROM, api_base=base, sleep=sleeps, rand=lambda: 0.0, max_attempts=2)
    try:
        result = await sender.send(TO, "hi")
    finally:
        await sender.aclose()
    assert result.outcome is SendOutcome.UNAVAILABLE and result.status is None and result.attempts == 2


def test_classify_and_backoff_are_pure() -> None:
    assert classify_send_error(408, 408) == (SendOutcome.UNAVAILABLE, True)
    assert classify_send_error(401, 401) == (SendOutcome.AUTH_FAILED, False)
    assert classify_send_error(404, 20404) == (SendOutcome.REJECTED, False)
    assert classify_send_error(None, None) == (SendOutcome.UNAVAILABLE, True)
    assert backoff_delay(10, 0.999) < 8.0
    assert backoff_delay(1, 0.0) == 0.0


async def test_check_fetches_the_account_and_names_bad_credentials(fake: FakeTwilio) -> None:
    from bot.settings import load_settings
    from bot.sms import check_twilio

    base = {"TWILIO_ACCOUNT_SID": SID, "TWILIO_PHONE_NUMBER": FROM, "TWILIO_API_BASE": fake.base_url,
            "PUBLIC_URL": "https://bot.example"}
    ok = await check_twilio(load_settings({**base, "TWILIO_AUTH_TOKEN": TOKEN}, env_file=None))
    assert "Test Account" in ok and "active" in ok
    with pytest.raises(RuntimeError, match="rejected") as info:
        await check_twilio(load_settings({**base, "TWILIO_AUTH_TOKEN": "wrong-token-456"}, env_file=None))
    assert "wrong-token-456" not in str(info.value)
