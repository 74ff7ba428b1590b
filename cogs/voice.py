"""Voice commands: bring the bot into a voice channel, send it away, and choose how it talks.

The work happens in :class:`bot.voice.manager.VoiceManager`; this cog checks who may do what,
translates commands into manager calls and answers (errors always ephemeral, slow work deferred).
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from audio.tts.base import TTSError, VoiceInfo
from bot.i18n.catalog import catalog_language, t
from bot.voice.consent import mode_explanation, status_summary
from bot.voice.guilds import ALLOWED, AUTO_JOIN, MAX_IDLE_LEAVE_SECONDS, GuildSettingsError
from bot.voice.manager import JoinOutcome, ListenView, VoiceCommandError, VoiceManager

if TYPE_CHECKING:
    from bot.client import VoiceBot

__all__ = ["VoiceCog", "GuildOnly", "NeedsManageServer", "guild_only_check", "manage_server_check",
           "voice_choices", "DM_MESSAGE", "ADMIN_MESSAGE"]

log = logging.getLogger(__name__)

DM_MESSAGE = "Voice commands work only in a server, not in direct messages."
ADMIN_MESSAGE = "You need the **Manage Server** permission to change that."
RESET_VOICE = "default"


class GuildOnly(app_commands.CheckFailure):
    """Used in a DM (Discord hides guild-only commands there, but an old client or a user app may not)."""

    catalog_key = "command.guild_only"

    def __init__(self) -> None:
        super().__init__(DM_MESSAGE)


class NeedsManageServer(app_commands.CheckFailure):
    catalog_key = "command.needs_manage_server"

    def __init__(self) -> None:
        super().__init__(ADMIN_MESSAGE)


def _guild_only(interaction: discord.Interaction) -> bool:
    if interaction.guild_id is None or interaction.guild is None:
        raise GuildOnly()
    return True


def _manage_server(interaction: discord.Interaction) -> bool:
    _guild_only(interaction)
    # interaction.permissions is what Discord computed for the caller in this channel
    if not interaction.permissions.manage_guild:
        raise NeedsManageServer()
    return True


def _caller_language(interaction: discord.Interaction) -> str:
    """The language of the caller's Discord client, when the bot has its words in it (else English)."""
    return catalog_language(str(interaction.locale)) if interaction.locale else "en"


guild_only_check = app_commands.check(_guild_only)
manage_server_check = app_commands.check(_manage_server)


def voice_choices(voices: list[VoiceInfo], current: str, *, limit: int = 25) -> list[app_commands.Choice[str]]:
    """Autocomplete choices matching what has been typed (by name or id), at most Discord's 25."""
    needle = current.strip().lower()
    out: list[app_commands.Choice[str]] = []
    if not needle or needle in RESET_VOICE:
        out.append(app_commands.Choice(name="default (the character's own voice)", value=RESET_VOICE))
    for voice in voices:
        if needle and needle not in voice.name.lower() and needle not in voice.id.lower():
            continue
        label = voice.name if not voice.description else f"{voice.name} — {voice.description}"
        out.append(app_commands.Choice(name=label[:100], value=voice.id[:100]))
        if len(out) >= limit:
            break
    return out


class VoiceCog(commands.Cog, name="Voice"):
    """Talk with the bot in voice channels."""

    voice = app_commands.Group(name="voice", description="The voice the bot speaks with", guild_only=True)

    def __init__(self, bot: VoiceBot, manager: VoiceManager, *, owns_manager: bool) -> None:
        self.bot = bot
        self.manager = manager
        self._owns_manager = owns_manager

    async def cog_unload(self) -> None:
        if self._owns_manager:
            await self.manager.aclose()

    # ------------------------------------------------------------------ helpers

    def _caller(self, interaction: discord.Interaction) -> discord.Member:
        member = interaction.user
        if not isinstance(member, discord.Member):
            guild = interaction.guild
            found = guild.get_member(member.id) if guild is not None else None
            if found is None:
                raise VoiceCommandError("I can't see you in this server's member list yet; try again in a moment.")
            member = found
        return member

    def _require_in_call(self, interaction: discord.Interaction, channel: discord.abc.GuildChannel,
                         refusal: str) -> None:
        """The caller is in ``channel`` (or has Manage Server); else :class:`VoiceCommandError`."""
        member = self._caller(interaction)
        in_call = member.voice is not None and member.voice.channel is not None \
            and member.voice.channel.id == channel.id
        if not in_call and not interaction.permissions.manage_guild:
            raise VoiceCommandError(refusal)

    @staticmethod
    async def _answer(interaction: discord.Interaction, text: str) -> None:
        """Reply ephemerally, whether or not the interaction was deferred."""
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)

    # ------------------------------------------------------------------ join / leave

    @app_commands.command(name="join")
    @app_commands.guild_only()
    @guild_only_check
    @app_commands.describe(channel="The voice channel to join (default: the one you're in)")
    async def join(self, interaction: discord.Interaction,
                   channel: discord.VoiceChannel | discord.StageChannel | None = None) -> None:
        """Bring me into your voice channel (or the one you name) to listen and talk."""
        try:
            member = self._caller(interaction)
            if channel is None:
                if member.voice is None or member.voice.channel is None:
                    raise VoiceCommandError(t("voice.you_are_not_in_voice", _caller_language(interaction)))
                channel = member.voice.channel  # type: ignore[assignment]
            assert channel is not None
            if self.manager.optouts.is_opted_out(member.id):
                note = "\n(You opted out, so I won't hear you; `/optin` if you change your mind.)"
            else:
                note = ""
            # Connecting takes a voice handshake (and DAVE): well past Discord's 3-second window.
            await interaction.response.defer(ephemeral=True, thinking=True)
            outcome = await self.manager.join(channel)
        except VoiceCommandError as exc:
            await self._answer(interaction, str(exc))
            return
        key = {JoinOutcome.JOINED: "voice.joined", JoinOutcome.MOVED: "voice.moved",
               JoinOutcome.ALREADY: "voice.already"}[outcome]
        text = t(key, _caller_language(interaction), channel=channel.mention)
        await self._answer(interaction, text + note)

    @app_commands.command(name="leave")
    @app_commands.guild_only()
    @guild_only_check
    async def leave(self, interaction: discord.Interaction) -> None:
        """Send me out of the voice channel; I stop listening at once."""
        assert interaction.guild_id is not None
        language = _caller_language(interaction)
        if self.manager.connection(interaction.guild_id) is None and not self.manager.busy(interaction.guild_id):
            await self._answer(interaction, t("voice.not_in_channel_here", language))
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        left = await self.manager.leave(interaction.guild_id, reason=f"/leave by {interaction.user.id}", notes=True)
        await self._answer(interaction, t("voice.left" if left else "voice.not_in_channel_here", language))

    @app_commands.command(name="transcript")
    @app_commands.guild_only()
    @guild_only_check
    async def transcript(self, interaction: discord.Interaction) -> None:
        """Get the transcript of the current voice call as a file (for people in the call)."""
        assert interaction.guild_id is not None
        try:
            gv = self.manager.connection(interaction.guild_id)
            if gv is None:
                raise VoiceCommandError("I'm not in a voice channel in this server, so there is no call to transcribe.")
            self._require_in_call(interaction, gv.channel,
                                  f"The transcript is for the people in {gv.channel.mention}; join it first.")
            data, name, cut = self.manager.transcript(interaction.guild_id)
        except VoiceCommandError as exc:
            await self._answer(interaction, str(exc))
            return
        note = "Here's the transcript of this call so far."
        if cut:
            note += " Its first part is left out: the whole would be larger than Discord accepts."
        await interaction.response.send_message(note, file=discord.File(io.BytesIO(data), filename=name),
                                                ephemeral=True)

    # ------------------------------------------------------------------ speaking

    @app_commands.command(name="say")
    @app_commands.guild_only()
    @guild_only_check
    @app_commands.describe(text="What I should say out loud")
    async def say(self, interaction: discord.Interaction, text: app_commands.Range[str, 1, 1000]) -> None:
        """Have me say something out loud in the voice channel I'm in."""
        assert interaction.guild_id is not None
        try:
            gv = self.manager.connection(interaction.guild_id)
            if gv is None:
                raise VoiceCommandError("I'm not in a voice channel in this server. Use `/join` first.")
            self._require_in_call(interaction, gv.channel, f"Join {gv.channel.mention} to make me speak there.")
            if not text.strip():
                raise VoiceCommandError("There's nothing to say in that.")
            await interaction.response.defer(ephemeral=True, thinking=True)
            result = await self.manager.say(interaction.guild_id, text)
        except VoiceCommandError as exc:
            await self._answer(interaction, str(exc))
            return
        if result is None:
            await self._answer(interaction, "There was nothing I could pronounce in that.")
        elif result.interrupted:
            await self._answer(interaction, "Said part of it; someone spoke over me.")
        elif result.first_frame_at is None and result.total_seconds == 0:
            await self._answer(interaction, "I can't talk in that channel right now, so I posted it in its chat.")
        else:
            await self._answer(interaction, "Said it.")

    @app_commands.command(name="listen")
    @app_commands.guild_only()
    @guild_only_check
    async def listen(self, interaction: discord.Interaction) -> None:
        """Push-to-talk: I answer what you say in the next 30 seconds."""
        try:
            text = self.manager.listen(interaction.guild, interaction.user)
        except VoiceCommandError as exc:
            text = str(exc)
        await self._answer(interaction, text)

    # ------------------------------------------------------------------ settings

    @app_commands.command(name="mode")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @manage_server_check
    @app_commands.describe(mode="auto: anyone when alone, else when named; always; addressed: when named; "
                                "push-to-talk: when asked; scribe: notes only")
    async def mode(self, interaction: discord.Interaction,
                   mode: Literal["auto", "always", "addressed", "push-to-talk", "scribe"]) -> None:
        """Choose when I answer in voice in this server (needs Manage Server)."""
        assert interaction.guild_id is not None
        try:
            gs = self.manager.set_mode(interaction.guild_id, mode)
        except GuildSettingsError as exc:
            await self._answer(interaction, str(exc))
            return
        language = _caller_language(interaction)
        extra = " " + t("mode.listen_hint", language) if gs.mode == "push-to-talk" else ""
        await self._answer(interaction, f"{t('mode.set', language, mode=gs.mode)} "
                           f"{mode_explanation(gs.mode, self.manager.agent.character.name, language)}{extra}")

    @voice.command(name="list")
    @guild_only_check
    async def voice_list(self, interaction: discord.Interaction) -> None:
        """List the voices I can speak with."""
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            voices = await self.manager.list_voices()
        except TTSError as exc:
            await self._answer(interaction, exc.user_message)
            return
        current = self.manager.guild_settings.get(interaction.guild_id).voice_id
        if not voices:
            await self._answer(interaction, "This voice engine has no voices to choose from.")
            return
        lines = [f"{'▶ ' if v.id == current else '• '}**{discord.utils.escape_markdown(v.name)}** `{v.id}`"
                 + (f" — {v.description}" if v.description else "") for v in voices[:40]]
        if len(voices) > 40:
            lines.append(f"…and {len(voices) - 40} more (type in `/voice set` to search).")
        header = "Voices (pick one with `/voice set`):" if current else \
            "Voices (using the default; pick one with `/voice set`):"
        await self._answer(interaction, (header + "\n" + "\n".join(lines))[:2000])

    @voice.command(name="set")
    @manage_server_check
    @app_commands.describe(voice="A voice name or id, or 'default' for the character's own voice")
    async def voice_set(self, interaction: discord.Interaction, voice: app_commands.Range[str, 1, 128]) -> None:
        """Choose the voice I speak with in this server (needs Manage Server)."""
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        wanted = voice.strip()
        chosen: str | None
        if wanted.lower() == RESET_VOICE:
            chosen, label = None, "the default voice"
        else:
            try:
                voices = await self.manager.list_voices()
            except TTSError as exc:
                await self._answer(interaction, exc.user_message)
                return
            match = next((v for v in voices if v.id == wanted), None) or \
                next((v for v in voices if v.name.lower() == wanted.lower()), None)
            if voices and match is None:
                await self._answer(interaction, f"I don't know a voice called {wanted!r}. "
                                   "See `/voice list`, or let autocomplete suggest one.")
                return
            chosen, label = (match.id, match.name) if match else (wanted, wanted)
        try:
            self.manager.set_voice(interaction.guild_id, chosen)
        except GuildSettingsError as exc:
            await self._answer(interaction, str(exc))
            return
        await self._answer(interaction, f"I'll speak with **{discord.utils.escape_markdown(label)}** here.")

    @voice_set.autocomplete("voice")
    async def _voice_autocomplete(self, interaction: discord.Interaction,
                                  current: str) -> list[app_commands.Choice[str]]:
        try:
            voices = await self.manager.list_voices()
        except TTSError:
            voices = []
        return voice_choices(voices, current)

    @voice.command(name="autojoin")
    @manage_server_check
    @app_commands.describe(channel="A voice channel", on="Join it by myself when someone arrives (true) or not (false)")
    async def voice_autojoin(self, interaction: discord.Interaction,
                             channel: discord.VoiceChannel | discord.StageChannel, on: bool) -> None:
        """Choose voice channels I join by myself when the first person arrives (needs Manage Server)."""
        assert interaction.guild_id is not None
        await self._channel_list(interaction, AUTO_JOIN, channel, on)

    @voice.command(name="allow")
    @manage_server_check
    @app_commands.describe(channel="A voice channel", on="Allow bringing me there (true) or not (false)")
    async def voice_allow(self, interaction: discord.Interaction,
                          channel: discord.VoiceChannel | discord.StageChannel, on: bool) -> None:
        """Limit which voice channels I may be brought into; none listed means any (needs Manage Server)."""
        assert interaction.guild_id is not None
        await self._channel_list(interaction, ALLOWED, channel, on)

    async def _channel_list(self, interaction: discord.Interaction, kind: str,
                            channel: discord.VoiceChannel | discord.StageChannel, on: bool) -> None:
        assert interaction.guild_id is not None
        try:
            listed = self.manager.guild_settings.set_channel(interaction.guild_id, kind, channel.id, on)
        except GuildSettingsError as exc:
            await self._answer(interaction, str(exc))
            return
        names = ", ".join(f"<#{cid}>" for cid in sorted(listed)) or "none"
        if kind == AUTO_JOIN:
            text = f"I join these by myself when someone arrives: {names}."
        else:
            text = f"I may be brought into: {names}." if listed else "I may be brought into any voice channel."
        await self._answer(interaction, text)

    @voice.command(name="settings")
    @manage_server_check
    @app_commands.describe(
        transcript="Post who said what (and my replies) in the voice channel's chat",
        idle_leave_seconds=f"Leave after this many seconds alone (0 = stay; at most {MAX_IDLE_LEAVE_SECONDS})",
        record_audio="Allow saving voice audio to disk (also needs RECORD_AUDIO=true on the bot)",
        bots="Hear other bots in the voice channel (music bots...); off: their audio is ignored unheard",
    )
    async def voice_settings(self, interaction: discord.Interaction, transcript: bool | None = None,
                             idle_leave_seconds: app_commands.Range[int, 0, MAX_IDLE_LEAVE_SECONDS] | None = None,
                             record_audio: bool | None = None, bots: bool | None = None) -> None:
        """Show or change this server's voice settings (needs Manage Server)."""
        assert interaction.guild_id is not None
        changes: dict[str, object] = {}
        if transcript is not None:
            changes["mirror_transcripts"] = transcript
        if idle_leave_seconds is not None:
            changes["idle_leave_seconds"] = idle_leave_seconds
        if record_audio is not None:
            changes["record_audio"] = record_audio
        if bots is not None:
            changes["include_bots"] = bots
        try:
            gs = await self.manager.update_settings(interaction.guild_id, **changes)
        except GuildSettingsError as exc:
            await self._answer(interaction, str(exc))
            return
        settings = self.manager.settings
        recording = "allowed" if gs.record_audio else "off"
        if gs.record_audio and not settings.record_audio:
            recording += " here, but switched off for the whole bot (RECORD_AUDIO), so nothing is saved"
        idle = "never" if gs.idle_leave_seconds == 0 else f"after {gs.idle_leave_seconds} s alone"
        lines = ["Saved." if changes else "Current voice settings:",
                 f"• mode: **{gs.mode}**", f"• voice: **{gs.voice_id or 'default'}**",
                 f"• transcript in chat: **{'on' if gs.mirror_transcripts else 'off'}**",
                 f"• leave: **{idle}**", f"• audio recording: **{recording}**",
                 f"• joins by itself: **{self._listed(interaction.guild_id, AUTO_JOIN) or 'nowhere'}**",
                 f"• may be brought into: **{self._listed(interaction.guild_id, ALLOWED) or 'any channel'}**",
                 f"• other bots: **{'heard' if gs.include_bots else 'ignored'}**",
                 f"• transcripts kept: **{settings.transcript_retention_days or 'forever'}"
                 f"{' days' if settings.transcript_retention_days else ''}**"]
        await self._answer(interaction, "\n".join(lines))

    def _listed(self, guild_id: int, kind: str) -> str:
        return ", ".join(f"<#{cid}>" for cid in sorted(self.manager.guild_settings.channels(guild_id, kind)))

    # ------------------------------------------------------------------ status

    @app_commands.command(name="status")
    @app_commands.guild_only()
    @guild_only_check
    async def status(self, interaction: discord.Interaction) -> None:
        """Show my voice connection, encryption, packet counts, providers and last reply latency."""
        assert interaction.guild_id is not None
        text = status_summary(self.manager.status(interaction.guild_id), self.manager.providers,
                              bot_name=self.manager.agent.character.name,
                              language=self.manager.language_summary(interaction.guild))
        await self._answer(interaction, text)

    # ------------------------------------------------------------------ events

    @commands.Cog.listener()
    async def on_voice_state_update(self, member: discord.Member, before: discord.VoiceState,
                                    after: discord.VoiceState) -> None:
        await self.manager.on_voice_state_update(member, before, after)


async def setup(bot: VoiceBot) -> None:
    services = bot.services
    manager = services.voice
    owns = manager is None
    if manager is None:
        manager = VoiceManager.from_services(services)
    await bot.add_cog(VoiceCog(bot, manager, owns_manager=owns))
    # Persistent: the push-to-talk button on notices posted before a restart keeps working.
    bot.add_view(ListenView(manager, services.agent.character.name))
