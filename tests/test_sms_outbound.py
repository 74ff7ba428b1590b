"""REST sends through the real twilio SDK against the loopback fake Twilio API."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from bot.sms.outbound import (
    SendOutcome,
    SendResult,
    TwilioSender,
    backoff_delay,
    classify_send_error,
    comparable_body,
    maybe_created,
)
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


async def send_once(sender: TwilioSender, body: str = "hi") -> SendResult:
    """One send to TO, then the sender closed."""
    try:
        return await sender.send(TO, body)
    finally:
        await sender.aclose()


async def test_send_reaches_fake_with_real_wire_format(fake: FakeTwilio) -> None:
    sender = make_sender(fake, Sleeps())
    result = await send_once(sender, "hello there")
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
    result = await send_once(sender)
    assert (result.outcome, result.code, result.status, result.attempts) == (outcome, code, status, 1)
    assert fake.attempts == 1 and sleeps.delays == [] and fake.sent == []


async def test_wrong_credentials_are_auth_failed_and_secret_free(fake: FakeTwilio) -> None:
    sender = make_sender(fake, Sleeps(), token="wrong-token-456")
    result = await send_once(sender)
    assert result.outcome is SendOutcome.AUTH_FAILED and result.attempts == 1
    assert fake.unauthorized == 1
    assert "wrong-token-456" not in repr(result) and "wrong-token-456" not in repr(sender)


@pytest.mark.parametrize(("status", "code"), [(429, 20429), (503, None), (500, 20500)])
async def test_retryable_errors_back_off_then_succeed(fake: FakeTwilio, status: int, code: int | None) -> None:
    sleeps = Sleeps()
    fake.fail_next(status, code, times=2)
    sender = make_sender(fake, sleeps)
    result = await send_once(sender)
    assert result.ok and result.attempts == 3
    assert sleeps.delays == [0.25, 0.5]  # rand=0.5 of 0.5 s, 1 s
    assert len(fake.sent) == 1


async def test_retries_are_bounded(fake: FakeTwilio, caplog: pytest.LogCaptureFixture) -> None:
    sleeps = Sleeps()
    fake.fail_next(502, raw="<html>bad gateway</html>", times=10)
    sender = make_sender(fake, sleeps, max_attempts=3)
    with caplog.at_level(logging.INFO, logger="bot.sms.outbound"):
        result = await send_once(sender)
    assert result.outcome is SendOutcome.UNAVAILABLE and result.attempts == 3 and result.status == 502
    assert fake.attempts == 3 and len(sleeps.delays) == 2
    assert len([r for r in caplog.records if r.name == "bot.sms.outbound"]) == 2  # one line per retry


async def test_connection_refused_is_unavailable() -> None:
    sleeps = Sleeps()
    async with FakeTwilio(SID, TOKEN) as server:
        base = server.base_url
    sender = TwilioSender(SID, TOKEN, FROM, api_base=base, sleep=sleeps, rand=lambda: 0.0, max_attempts=2)
    result = await send_once(sender)
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


# --- a send that may have been created: ask Twilio's list before sending it again ----------------


@pytest.mark.parametrize("failure", ["503 after creating", "html 502 after creating", "dropped after creating"])
async def test_a_message_twilio_created_then_failed_to_confirm_is_not_sent_twice(
        fake: FakeTwilio, failure: str, caplog: pytest.LogCaptureFixture) -> None:
    if failure.startswith("503"):
        fake.fail_next(503, None, "Service Unavailable", created=True)
    elif failure.startswith("html"):
        fake.fail_next(502, raw="<html>bad gateway</html>", created=True)
    else:
        fake.drop_next(created=True)
    sleeps = Sleeps()
    sender = make_sender(fake, sleeps)
    with caplog.at_level(logging.INFO, logger="bot.sms.outbound"):
        result = await send_once(sender, "hello there")
    [created] = fake.sent
    assert len(fake.messages) == 1 and fake.attempts == 1  # one text, one create
    assert result.ok and result.sid == created.sid and result.attempts == 1 and sleeps.delays == []
    assert [q["To"] for q in fake.list_requests] == [TO, TO]  # it asked the list, as recovery does
    [line] = [r.getMessage() for r in caplog.records if r.name == "bot.sms.outbound"]
    assert "had created the message" in line and TO not in line


@pytest.mark.parametrize("failure", ["503", "dropped"])
async def test_a_send_twilio_did_not_create_is_retried_once_the_list_says_so(fake: FakeTwilio, failure: str) -> None:
    if failure == "503":
        fake.fail_next(503)
    else:
        fake.drop_next(created=False)
    sleeps = Sleeps()
    sender = make_sender(fake, sleeps)
    result = await send_once(sender, "hello there")
    assert result.ok and result.attempts == 2 and len(fake.sent) == 1 and fake.attempts == 2
    assert len(fake.list_requests) == 2 and sleeps.delays == [0.25]


async def test_when_the_list_cannot_say_nothing_is_sent_again_and_the_outcome_is_uncertain(
        fake: FakeTwilio, caplog: pytest.LogCaptureFixture) -> None:
    fake.fail_next(503, created=True)
    fake.list_failures = 100
    sleeps = Sleeps()
    sender = make_sender(fake, sleeps, max_attempts=3)
    with caplog.at_level(logging.INFO, logger="bot.sms.outbound"):
        result = await send_once(sender, "hello there")
    assert result.outcome is SendOutcome.UNCERTAIN and not result.ok and result.status == 503
    assert len(fake.sent) == 1 and fake.attempts == 1  # never a second text
    assert len(fake.list_requests) == 3 and len(sleeps.delays) == 2  # asked three times, backing off
    [line] = [r.getMessage() for r in caplog.records if r.name == "bot.sms.outbound"]
    assert "cannot say whether" in line and TO not in line


async def test_a_list_that_fails_once_then_answers_still_prevents_the_second_text(fake: FakeTwilio) -> None:
    fake.fail_next(503, created=True)
    fake.list_failures = 1
    sender = make_sender(fake, Sleeps())
    result = await send_once(sender, "hello there")
    assert result.ok and len(fake.sent) == 1


async def test_an_earlier_identical_text_is_not_taken_for_this_one(fake: FakeTwilio) -> None:
    """"OK." sent a minute ago is its own message: a later "OK." that failed before Twilio created
    it is sent, and one that Twilio did create is found as itself, not as the earlier one."""
    sender = make_sender(fake, Sleeps())
    try:
        first = await sender.send(TO, "OK.")
        fake.fail_next(503)  # not created
        second = await sender.send(TO, "OK.")
        fake.fail_next(503, created=True)
        third = await sender.send(TO, "OK.")
    finally:
        await sender.aclose()
    assert [m.body for m in fake.sent] == ["OK.", "OK.", "OK."]
    assert len({first.sid, second.sid, third.sid}) == 3 and third.sid == fake.sent[2].sid


async def test_refusals_and_rate_limits_do_not_ask_the_list(fake: FakeTwilio) -> None:
    sender = make_sender(fake, Sleeps())
    try:
        fake.fail_next(429, 20429)
        assert (await sender.send(TO, "hi")).ok  # refused, retried, sent
        fake.fail_next(400, 21211)
        assert (await sender.send(TO, "hi")).outcome is SendOutcome.INVALID_NUMBER
    finally:
        await sender.aclose()
    assert fake.list_requests == []


def test_maybe_created_is_no_answer_a_timeout_or_a_server_error() -> None:
    assert [maybe_created(s) for s in (None, 408, 500, 502, 503)] == [True] * 5
    assert [maybe_created(s) for s in (400, 401, 404, 429)] == [False] * 4


# --- bodies as Twilio may have rewritten them --------------------------------------------------

# Twilio's Smart Encoding for the characters these tests use, and a trial account's prefix.
SMART = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-",
                       "\u2026": "...", "\u00a0": " "})
TRIAL = "Sent from your Twilio trial account - "


@pytest.mark.parametrize(("ours", "listed"), [
    ("Hello there.", TRIAL + "Hello there."),
    ("It\u2019s \u201cfine\u201d \u2013 really\u2026", "It's \"fine\" - really..."),
    ("9\u20135 \u2014 every day", "9-5 - every day"),
    ("Fine, thanks.  ", "Fine, thanks."),
    ("Fine,\u00a0thanks.", "Fine, thanks."),
    ("Line one\nline two", "Line one\r\nline two"),
    ("\uff2f\uff2b\uff01", "OK!"),
    ("It\u2019s late\u2026 ", TRIAL + "It's late..."),
])
def test_bodies_twilio_rewrote_are_the_same_message(ours: str, listed: str) -> None:
    assert comparable_body(ours) == comparable_body(listed)


@pytest.mark.parametrize(("ours", "listed"), [
    ("It's fine.", "Its fine."),
    ("Hello there.", "Hello there!"),
    ("Hello", "Hello there"),
    ("9-5", "95"),
    ("Sure - see you at 5.", "Sure - see you at 6."),
    ("Hi x", "Hi " + TRIAL + "x"),  # the prefix only counts in front
    ("Hello there.", TRIAL.strip()),
])
def test_a_different_message_is_not_the_same(ours: str, listed: str) -> None:
    assert comparable_body(ours) != comparable_body(listed)


async def test_find_sent_and_the_retry_check_see_through_twilios_rewriting(fake: FakeTwilio) -> None:
    import time

    fake.rewrite = lambda body: TRIAL + body.translate(SMART)
    reply = ["It\u2019s raining \u2013 take a coat\u2026", "See you \u201csoon\u201d."]
    since = time.time() - 1
    sender = make_sender(fake, Sleeps())
    try:
        fake.fail_next(503, created=True)
        assert (await sender.send(TO, reply[0])).ok  # created, answered 503, found despite the rewrite
        assert [m.body for m in fake.sent] == [TRIAL + "It's raining - take a coat..."]
        # Recovery after a crash asks about the whole reply: the first is there, the second is not,
        # and a different text with the same start is not taken for it.
        fresh = make_sender(fake, Sleeps())
        try:
            assert await fresh.find_sent(TO, [*reply, "It\u2019s raining \u2013 take a hat\u2026"], since) == \
                [True, False, False]
        finally:
            await fresh.aclose()
    finally:
        await sender.aclose()
