"""Two real ``voicebot serve`` processes on one PostgreSQL behind an imagined load balancer: the TwiML
answer comes from one, the media WebSocket lands on the other and the call is answered there; the
token is spent for both (the first process refuses it afterwards), and a call ended through one
process's status callback opens nowhere."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest

from bot.phone.caller import LoopbackTwilio
from tests.cli_runs import CliRun, free_port
from tests.fakes.deepgram_server import FakeDeepgram
from tests.test_cluster_processes import DEADLINE, healthy

ACCOUNT = "AC" + "c" * 32
AUTH = "cluster-phone-auth-token-0123456789"
PUBLIC = "https://bot.example.test"
CALLER = "+15557654321"


async def test_twiml_from_one_process_and_the_stream_on_another_make_one_call(tmp_path: Path, pg_url: str) -> None:
    async with FakeDeepgram() as dg, LoopbackTwilio(bot_url="http://127.0.0.1:1", public_url=PUBLIC,
                                                     account_sid=ACCOUNT, auth_token=AUTH) as twilio:
        ports = [free_port(), free_port()]
        env = {"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": AUTH, "TWILIO_PHONE_NUMBER": twilio.number,
               "TWILIO_API_BASE": twilio.api_base, "PUBLIC_URL": PUBLIC, "DATABASE_URL": pg_url, "PRIVACY_KEY": "ab" * 32,
               "AGENT_ENGINE": "eliza", "STT_ENGINE": "deepgram", "DEEPGRAM_API_KEY": dg.api_key,
               "DEEPGRAM_URL": dg.ws_url, "TTS_ENGINE": "espeak", "LOG_LEVEL": "INFO"}
        runs = [CliRun("serve", tmp_path / f"p{i}", {**env, "WEB_PORT": str(ports[i])}).start() for i in range(2)]
        a, b = (f"http://127.0.0.1:{port}" for port in ports)
        try:
            for port in ports:
                await healthy(port, *runs)
            twilio.set_bot_url(a)
            call_sid, twiml = await twilio.ring(CALLER)  # process A answers the webhook
            twilio.set_bot_url(b)
            on_b = twilio.stream_url(twiml)  # the load balancer sends the socket to process B
            assert on_b is not None and on_b.startswith(f"ws://127.0.0.1:{ports[1]}/")
            call = await twilio.open_stream(on_b, call_sid, CALLER)
            await call.wait_for(lambda: call.played() > 0, timeout=DEADLINE)  # B speaks its greeting
            # The token is spent in the database: A refuses it too.
            twilio.set_bot_url(a)
            on_a = twilio.stream_url(twiml)
            assert on_a is not None
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await twilio.open_stream(on_a, call_sid, CALLER)
            assert refused.value.status == 403
            await call.hang_up()
            await call.wait_for(lambda: call.ended, timeout=DEADLINE)

            # A call that ended (status callback to B) before its stream connected opens nowhere.
            other_sid, other = await twilio.ring(CALLER)  # answered by A
            twilio.set_bot_url(b)
            assert await twilio.status_callback(other_sid, "canceled") == 204
            for base in (a, b):
                twilio.set_bot_url(base)
                with pytest.raises(aiohttp.WSServerHandshakeError):
                    await twilio.open_stream(twilio.stream_url(other) or "", other_sid, CALLER)
            assert twilio.problems == []
        finally:
            for run in runs:
                assert run.proc is not None
                run.proc.send_signal(signal.SIGTERM)
            finished = [await asyncio.to_thread(run.finish, DEADLINE) for run in runs]
        assert [f.code for f in finished] == [0, 0], [f.output[-2000:] for f in finished]
        assert "connecting its media stream" in finished[0].output  # A answered the webhook
        assert "connecting its media stream" not in finished[1].output
