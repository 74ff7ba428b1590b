"""Never deaf without knowing it, on the loopback Discord (issue 11): streams that jump are heard
again, a speaker the bot cannot hear makes the watchdog rejoin, and other bots are not heard unless
the guild includes them.

The real VoiceBot, discord.py's voice handshake with DAVE, real UDP and the real decode pipeline;
waits are on state (messages the bot posted, counters reaching a value) with generous timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from audio.receive import BOT, VoicePacket
from audio.watchdog import DeafWatchdog
from bot.loopback.server import LocalDiscord
from tests.test_voice_commands import (  # noqa: F401
    TIMEOUT,
    RecordingPipeline,
    _seed,
    _sine_pcm_48k_stereo,
    discord_,
    running_bot,
)


async def until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll a predicate (a counter reaching a value) with an overall timeout that only guards failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def heard(h: Any, user_id: int) -> int:
    return h.pipelines[-1].heard().get(user_id, 0)


async def test_a_stream_that_jumps_is_heard_again_without_a_rejoin(discord_: LocalDiscord,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch):
        alice = await h.alice.join_voice(h.voice)
        await h.command(h.alice, "join")
        await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
        gv = h.manager.connection(h.guild.id)
        pcm = _sine_pcm_48k_stereo(0.6)
        await alice.speak_pcm(pcm)
        await until(lambda: heard(h, h.alice.id) >= 25, "Alice heard at first")

        # One authenticated silence frame 20,000 ahead on her SSRC, then she goes on talking.
        assert alice.send_stray(20_000) == 1
        await until(lambda: h.pipelines[-1].stats().strays == 1, "the stray reaching the decoder")
        before = heard(h, h.alice.id)
        await alice.speak_pcm(pcm)
        await until(lambda: heard(h, h.alice.id) >= before + 25, "Alice heard after the stray frame")

        # Her client restarts on a new SSRC, 1,000 sequence numbers behind, with no op 13 and no op 5:
        # trial decryption finds her, her old SSRC is retired and a fresh decoder follows the new one.
        alice.restart_stream(ssrc=discord_.voice.new_ssrc(), seq_step=-1000)
        before = heard(h, h.alice.id)
        trials = gv.vc.stats.trial_attributed  # a first packet racing its op 5 may have been one already
        await alice.speak_opus(await _frames(pcm), announce=False)
        await until(lambda: heard(h, h.alice.id) >= before + 25, "Alice heard on her new SSRC")
        assert gv.vc.receiver.ssrc_to_user == {alice.ssrc: h.alice.id}
        assert h.pipelines[-1].stats().ssrc_changes == 1 and gv.vc.stats.trial_attributed == trials + 1

        assert h.manager.connection(h.guild.id) is gv and gv.watchdog.rejoins == 0
        status = await h.command(h.alice, "status")
        assert "**Hearing:**" in status and "not heard for" not in status and "rejoined" not in status
        await h.command(h.alice, "leave")
    assert discord_.problems == []


async def _frames(pcm: bytes) -> list[bytes]:
    from bot.loopback.participant import encode_opus_frames

    return await asyncio.get_running_loop().run_in_executor(None, encode_opus_frames, pcm)


class DeafPipeline(RecordingPipeline):
    """A decode pipeline whose decoding is broken: packets arrive, nothing is ever decoded."""

    def on_packet(self, packet: VoicePacket) -> None:
        self.users.add(packet.user_id)
        self._packets += 1


async def test_a_speaker_the_bot_cannot_hear_makes_it_rejoin_once(discord_: LocalDiscord,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch):
        made = h.manager._pipeline_factory
        broken = {"left": 1}

        def factory(feed: Any, sample_rate: int) -> RecordingPipeline:
            if broken["left"]:  # the first connection's decoding is broken; the rejoin's is not
                broken["left"] -= 1
                pipeline = DeafPipeline(feed, sample_rate=sample_rate)
                h.pipelines.append(pipeline)
                return pipeline
            return made(feed, sample_rate)

        h.manager._pipeline_factory = factory
        alice = await h.alice.join_voice(h.voice)
        await h.command(h.alice, "join")
        await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
        first = h.manager.connection(h.guild.id)
        first.watchdog = DeafWatchdog(window_s=1.0, min_packets=10)
        # Alice talks; every packet decrypts and reaches the pipeline (receive-level delivery rises),
        # but nothing of hers is decoded: the watchdog must see that.
        speaking = asyncio.get_running_loop().create_task(alice.speak_pcm(_sine_pcm_48k_stereo(4.0)),
                                                          name="test-alice-speaks")
        try:
            await discord_.wait_bot_message(h.voice, contains="rejoining", timeout=TIMEOUT)
        finally:
            await speaking
        assert first.vc.stats.delivered > 0 and isinstance(h.pipelines[0], DeafPipeline)

        await until(lambda: (gv := h.manager.connection(h.guild.id)) is not None and gv is not first
                    and gv.vc.is_connected(), "the rejoined connection")
        again = h.manager.connection(h.guild.id)
        assert again.watchdog is first.watchdog and again.watchdog.rejoins == 1
        await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
        await alice.speak_pcm(_sine_pcm_48k_stereo(0.6))
        await until(lambda: heard(h, h.alice.id) >= 25, "Alice heard after the rejoin")
        assert not again.watchdog.given_up
        assert "deaf watchdog rejoined 1×" in await h.command(h.alice, "status")
        # said once, not repeated
        assert sum("rejoining" in m.content for m in h.voice.bot_messages) == 1
        await h.command(h.alice, "leave")
    assert discord_.problems == []


async def test_still_deaf_after_the_rejoin_says_so_and_stops_trying(discord_: LocalDiscord,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch):
        def factory(feed: Any, sample_rate: int) -> RecordingPipeline:
            pipeline = DeafPipeline(feed, sample_rate=sample_rate)  # every connection's decoding is broken
            h.pipelines.append(pipeline)
            return pipeline

        h.manager._pipeline_factory = factory
        alice = await h.alice.join_voice(h.voice)
        await h.command(h.alice, "join")
        await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
        first = h.manager.connection(h.guild.id)
        first.watchdog = DeafWatchdog(window_s=1.0, min_packets=10)
        await alice.speak_pcm(_sine_pcm_48k_stereo(1.0))
        await discord_.wait_bot_message(h.voice, contains="rejoining", timeout=TIMEOUT)
        await until(lambda: (gv := h.manager.connection(h.guild.id)) is not None and gv is not first
                    and gv.vc.is_connected(), "the rejoined connection")
        again = h.manager.connection(h.guild.id)
        await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
        await alice.speak_pcm(_sine_pcm_48k_stereo(1.0))
        await discord_.wait_bot_message(h.voice, contains="stopped trying", timeout=TIMEOUT)
        assert again.watchdog.given_up and again.watchdog.rejoins == 1
        assert h.manager.connection(h.guild.id) is again  # no second rejoin
        assert len(h.pipelines) == 2
        assert "deaf watchdog gave up after rejoining" in await h.command(h.alice, "status")
        await h.command(h.alice, "leave")
    assert discord_.problems == []


async def test_other_bots_are_not_heard_unless_the_guild_includes_them(discord_: LocalDiscord,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    dj = h.guild.add_member("DJ", bot=True)  # a music bot: bot=True in every gateway payload
    async with running_bot(h, monkeypatch):
        alice = await h.alice.join_voice(h.voice)
        await h.command(h.alice, "join")
        await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
        gv = h.manager.connection(h.guild.id)
        music = await dj.join_voice(h.voice)  # joins after the bot: known from its voice state
        await until(lambda: gv.vc.ignore_users == {dj.id}, "the DJ bot being ignored")
        assert "**Other bots:** 1 in the channel, not heard" in await h.command(h.alice, "status")

        await asyncio.gather(music.speak_pcm(_sine_pcm_48k_stereo(0.6, 330.0)),
                             alice.speak_pcm(_sine_pcm_48k_stereo(0.6)))
        await until(lambda: heard(h, h.alice.id) >= 25, "Alice heard")
        await until(lambda: gv.vc.stats.dropped.get(BOT, 0) >= 25, "the DJ's packets dropped")
        assert dj.id not in h.pipelines[-1].users  # dropped before decryption, never decoded
        # At most the one trial decryption that told whose SSRC it was (a packet racing its op 5);
        # none of the rest of the DJ's stream is decrypted.
        assert gv.vc._connection.dave_session.get_decryption_stats(dj.id).successes <= 1
        stats = gv.vc.stats
        assert stats.rejected == 0 and dj.id not in stats.packets_by_user

        answer = await h.command(h.boss, "voice settings", {"bots": True})
        assert "other bots: **heard**" in answer
        assert gv.vc.ignore_users == frozenset()
        await music.speak_pcm(_sine_pcm_48k_stereo(0.6, 330.0))
        await until(lambda: heard(h, dj.id) >= 25, "the DJ heard once bots are included")

        # stored like the other guild settings: off again, and a fresh join reads it
        assert "other bots: **ignored**" in await h.command(h.boss, "voice settings", {"bots": False})
        assert gv.vc.ignore_users == {dj.id} and dj.id not in h.pipelines[-1].speakers
        assert h.manager.guild_settings.get(h.guild.id).include_bots is False
        await h.command(h.alice, "leave")
        await h.command(h.alice, "join")
        await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
        assert h.manager.connection(h.guild.id).vc.ignore_users == {dj.id}  # already there when it joined
        await h.command(h.alice, "leave")
    assert discord_.problems == []
