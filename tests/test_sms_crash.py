"""The real process: ``python -m bot serve`` killed with SIGKILL in a burst, then stopped with SIGTERM;
and two of them on one PostgreSQL, one killed mid-burst, the other finishing its texts.

Every texter of a 200-message burst is answered exactly once after a kill -9 and a restart, with a
Twilio-like driver re-posting the signed webhooks; SIGTERM drains (503 to new webhooks, replies in
flight finish within SMS_SHUTDOWN_GRACE, the rest is logged and recorded for the next start).
Everything waits on state (model requests seen, deliveries done, no unfinished row in the database).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from bench.sms_crash import ACCOUNT, OURS, PUBLIC, TOKEN, Bot, _free_port, burst
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.twilio_server import FakeTwilio, sign_webhook

TIMEOUT = 240.0


async def test_burst_with_kill_9_every_message_answered_once_after_restart(tmp_path: Path) -> None:
    result = await burst(200, kill_when_busy=100, data_dir=tmp_path, timeout=TIMEOUT)
    assert result.never_answered == 0, result
    assert result.answered_twice == 0, result
    assert result.answered_before_kill >= 1  # the kill came while some were done and most were not
    assert sum(result.unfinished_at_kill.values()) >= 100, result
    assert result.answered_after_restart == 200 - result.answered_before_kill
    assert result.resumed_at_start >= 1


async def test_two_processes_on_one_postgresql_one_killed_mid_burst_every_text_answered_once(
        tmp_path: Path, pg_url: str) -> None:
    """Two real ``python -m bot serve`` on one PostgreSQL behind a round-robin balancer; one is
    SIGKILLed mid-burst and stays dead: the other finishes its texts (Twilio's retries land on it,
    its sweep takes the rest), each exactly once."""
    result = await burst(200, kill_when_busy=100, data_dir=tmp_path, timeout=TIMEOUT, processes=2,
                         database_url=pg_url)
    assert (result.answered_once, result.answered_twice, result.never_answered) == (200, 0, 0), result
    assert sum(result.unfinished_at_kill.values()) >= 1, result  # the kill left work behind
    assert result.taken_over_by_survivor >= 1, result  # and the survivor took it over
    assert result.answered_after_restart == 200 - result.answered_before_kill


def _can_unshare() -> bool:
    import subprocess

    try:
        return subprocess.run(["unshare", "--uts", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


async def test_two_processes_as_on_two_machines_the_dead_ones_texts_wait_for_their_leases(
        tmp_path: Path, pg_url: str) -> None:
    """Each process under a host name of its own: the survivor cannot tell the dead one is dead, so
    its texts (and Twilio's retries of them) wait until their 3-second leases expire; each once."""
    if not _can_unshare():
        pytest.skip("PostgreSQL two-host case not run: `unshare --uts` is not allowed here (needs root)")
    result = await burst(120, kill_when_busy=60, data_dir=tmp_path, timeout=TIMEOUT, processes=2,
                         database_url=pg_url, lease=3.0, separate_hosts=True)
    assert (result.answered_once, result.answered_twice, result.never_answered) == (120, 0, 0), result
    assert result.taken_over_by_survivor >= 1, result
    # Nothing of the dead one's was taken before its lease ran out (renewed every second: 2 s at least).
    assert result.recovery_seconds >= 2.0


async def _post(session: aiohttp.ClientSession, port: int, sid: str, frm: str, body: str) -> tuple[int, str]:
    fields = {"MessageSid": sid, "SmsSid": sid, "AccountSid": ACCOUNT, "From": frm, "To": OURS, "Body": body,
              "NumMedia": "0"}
    headers = {"X-Twilio-Signature": sign_webhook(TOKEN, PUBLIC + "/twilio/sms", fields)}
    async with session.post(f"http://127.0.0.1:{port}/twilio/sms", data=fields, headers=headers) as resp:
        return resp.status, await resp.text()


async def _sigterm_run(tmp_path: Path, grace: str, *, probe: bool = True) -> tuple[Bot, FakeTwilio, int,
                                                                                    list[tuple[int, str]]]:
    """Three replies in flight, then SIGTERM; with ``probe``, one more webhook during the drain (which
    lasts until the model is let go, so it is seen for sure); returns the exit code and statuses."""
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    async with FakeTwilio(ACCOUNT, "x") as twilio, FakeOpenAI(api_key="sk-sigterm-0123456789", paced=True) as model:
        twilio.auth_token = TOKEN
        bot = Bot(tmp_path, _free_port(), twilio.base_url, model.base_url)
        bot.env.update({"OPENAI_API_KEY": "sk-sigterm-0123456789", "SMS_SHUTDOWN_GRACE": grace})
        await bot.start()
        try:
            await bot.wait_ready(TIMEOUT)
            statuses: list[tuple[int, str]] = []
            async with aiohttp.ClientSession() as session:
                webhooks = [asyncio.create_task(_post(session, bot.port, f"SM{i:032d}", f"+1555300000{i}", "hi"),
                                                name=f"webhook-{i}") for i in range(3)]
                async with asyncio.timeout(TIMEOUT):
                    while len(model.completion_requests) < 3:
                        await asyncio.sleep(0.02)  # polling a predicate
                assert bot.proc is not None
                bot.proc.terminate()  # SIGTERM
                async with asyncio.timeout(TIMEOUT):
                    if probe:
                        while True:  # /healthz says 503 once the drain has begun
                            async with session.get(f"http://127.0.0.1:{bot.port}/healthz") as resp:
                                if resp.status == 503:
                                    assert (await resp.json())["parts"]["sms"] is False
                                    break
                            await asyncio.sleep(0.02)  # polling a predicate
                        statuses.append(await _post(session, bot.port, "SM" + "7" * 32, "+15553009999", "late"))
                    else:  # no grace: the model never lets them finish before the exit
                        code = await bot.proc.wait()
                model.allow(100)  # the three replies in flight can now finish (if there is grace left)
                async with asyncio.timeout(TIMEOUT):
                    code = await bot.proc.wait()
                statuses += await asyncio.gather(*webhooks)
            return bot, twilio, code, statuses
        finally:
            if bot.proc is not None and bot.proc.returncode is None:
                bot.kill()
                await bot.proc.wait()


async def test_sigterm_drains_replies_in_flight_and_answers_503(tmp_path: Path) -> None:
    bot, twilio, code, statuses = await _sigterm_run(tmp_path, "120")
    assert code == 0, bot.log_text()
    assert statuses[0][0] == 503
    # The three in flight were answered (in their webhooks' TwiML, which were still open).
    assert all(status == 200 and "<Message>" in xml for status, xml in statuses[1:]), statuses
    log = bot.log_text()
    assert "3 of 3 reply(ies) in flight finished within the 120s grace" in log
    # The webhook refused during the drain is recorded (its text kept) for the next start.
    assert "1 message(s) not answered" in log and "1 received" in log
    assert bot.states().get("received") == 1 and bot.states().get("answered") == 3


async def test_sigterm_with_no_grace_leaves_replies_recorded_and_says_so(tmp_path: Path) -> None:
    # No probe: with no grace the drain is over at once, so a late webhook could find nobody listening.
    bot, twilio, code, statuses = await _sigterm_run(tmp_path, "0", probe=False)
    assert code == 0, bot.log_text()
    # The webhooks waiting for those replies answer 503, so Twilio retries them after the restart.
    assert [status for status, _ in statuses] == [503] * 3, statuses
    log = bot.log_text()
    assert "0 of 3 reply(ies) in flight finished within the 0s grace; 3 message(s) not answered (3 replying)" \
        in log, log
    assert "+15553" not in log.replace("+1******", "")  # numbers stay masked
    assert bot.states() == {"replying": 3}


async def test_sigterm_to_the_whole_bot_drains_sms_too(tmp_path: Path) -> None:
    """``voicebot`` (Discord and the web side in one process, as the Procfile runs it) on SIGTERM."""
    from bot.loopback.server import LocalDiscord

    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    key = "sk-run-0123456789abcdef"
    async with LocalDiscord(token="loopback.voicebot.0123456789abcdef") as discord_, FakeTwilio(ACCOUNT, TOKEN) as twilio, \
            FakeOpenAI(api_key=key, paced=True) as model:
        discord_.add_guild()
        bot = Bot(tmp_path, _free_port(), twilio.base_url, model.base_url)
        bot.command = "run"
        bot.env.update({"OPENAI_API_KEY": key, "DISCORD_TOKEN": discord_.token, "DISCORD_API_BASE": discord_.api_base,
                        "DISCORD_CA_FILE": str(discord_.ca_file), "STT_ENGINE": "none", "TTS_ENGINE": "none"})
        await bot.start()
        try:
            await bot.wait_ready(TIMEOUT)  # Discord connected and the web side up
            async with aiohttp.ClientSession() as session:
                webhook = asyncio.create_task(_post(session, bot.port, "SM" + "6" * 32, "+15553001234", "hi"),
                                              name="webhook-run")
                async with asyncio.timeout(TIMEOUT):
                    while not model.completion_requests:
                        await asyncio.sleep(0.02)  # polling a predicate
                assert bot.proc is not None
                bot.proc.terminate()  # SIGTERM: before, this killed the process with the reply in it
                async with asyncio.timeout(TIMEOUT):
                    while True:
                        async with session.get(f"http://127.0.0.1:{bot.port}/healthz") as resp:
                            if resp.status == 503 and (await resp.json())["parts"].get("sms") is False:
                                break
                        await asyncio.sleep(0.02)  # polling a predicate
                model.allow(100)
                async with asyncio.timeout(TIMEOUT):
                    code = await bot.proc.wait()
                status, xml = await webhook
        finally:
            if bot.proc is not None and bot.proc.returncode is None:
                bot.kill()
                await bot.proc.wait()
    assert code == 0, bot.log_text()
    assert status == 200 and "<Message>" in xml
    assert bot.states() == {"answered": 1}
