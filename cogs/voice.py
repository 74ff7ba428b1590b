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
from bot.i18n.bidi import isolate
from bot.i18n.catalog import t
from bot.i18n.engine_texts import translate_engine_text
from bot.i18n.words import interaction_language
from bot.voice.consent import mode_explanation, status_summary
from bot.voice.guilds import ALLOWED, AUTO_JOIN, MAX_IDLE_LEAVE_SECONDS, GuildSettingsError
from bot.voice.manager import JoinOutcome, ListenView, VoiceCommandError, VoiceManager

if TYPE_CHECKING:
    from bot.client import VoiceBot

__all__ = ["VoiceCog", "GuildOnly", "NeedsManageServer", "guild_only_check", "manage_server_check",
           "voice_choices", "DM_MESSAGE", "ADMIN_MESSAGE"]

log = logging.getLogger(__name__)

DM_MESSAGE = t("command.guild_only", "en")  # str(exc) for logs; people get the catalog key's text
ADMIN_MESSAGE = t("command.needs_manage_server", "en")
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


guild_only_check = app_commands.check(_guild_only)
manage_server_check = app_commands.check(_manage_server)


def voice_choices(voices: list[VoiceInfo], current: str, *, limit: int = 25,
                  language: str = "en") -> list[app_commands.Choice[str]]:
    """Autocomplete choices matching what has been typed (by name or id), at most Discord's 25."""
    needle = current.strip().lower()
    out: list[app_commands.Choice[str]] = []
    if not needle or needle in RESET_VOICE:
        out.append(app_commands.Choice(name=t("voice.default_choice", language), value=RESET_VOICE))
    for voice in voices:
        if needle and needle not in voice.name.lower() and needle not in voice.id.lower():
            continue
        label = voice.name if not voice.description else f"{voice.name} — {voice.description}"
        out.append(app_commands.Choice(name=label[:100], value=voice.id[:100]))
        if len(out) >= limit:
            break
    return out


def _settings_error(exc: GuildSettingsError, language: str) -> str:
    """A refused setting in ``language``: its own catalog text when it has one, else a general line."""
    if exc.key:
        return t(exc.key, language, **exc.values)
    # Discord validates every option's type and range first, so these are a bug's or an old client's.
    return t("voice.setting_refused", language, detail=str(exc))


def _engine_failure(exc: TTSError, language: str) -> str:
    """The voice engine's own reason in ``language`` when the catalog knows it, else a general one."""
    said = translate_engine_text(exc.user_message, language)
    if language == "en" or said != exc.user_message:
        return said
    return t("voice.engine_failed", language)


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

    def _lang(self, interaction: discord.Interaction) -> str:
        """The language of this answer (the rule is in ``bot.i18n.words``)."""
        return interaction_language(interaction, self.manager.languages)

    def _caller(self, interaction: discord.Interaction) -> discord.Member:
        member = interaction.user
        if not isinstance(member, discord.Member):
            guild = interaction.guild
            found = guild.get_member(member.id) if guild is not None else None
            if found is None:
                raise VoiceCommandError("voice.not_in_member_list")
            member = found
        return member

    def _require_in_call(self, interaction: discord.Interaction, channel: discord.abc.GuildChannel,
                         refusal: str) -> None:
        """The caller is in ``channel`` (or has Manage Server); else :class:`VoiceCommandError` with the
        catalog key ``refusal`` (given the channel's mention)."""
        member = self._caller(interaction)
        in_call = member.voice is not None and member.voice.channel is not None \
            and member.voice.channel.id == channel.id
        if not in_call and not interaction.permissions.manage_guild:
            raise VoiceCommandError(refusal, channel=channel.mention)

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
        language = self._lang(interaction)
        try:
            member = self._caller(interaction)
            if channel is None:
                if member.voice is None or member.voice.channel is None:
                    raise VoiceCommandError("voice.you_are_not_in_voice")
                channel = member.voice.channel  # type: ignore[assignment]
            assert channel is not None
            if self.manager.optouts.is_opted_out(member.id):
                note = "\n" + t("voice.optout_note", language)
            else:
                note = ""
            # Connecting takes a voice handshake (and DAVE): well past Discord's 3-second window.
            await interaction.response.defer(ephemeral=True, thinking=True)
            outcome = await self.manager.join(channel)
        except VoiceCommandError as exc:
            await self._answer(interaction, exc.in_language(language))
            return
        key = {JoinOutcome.JOINED: "voice.joined", JoinOutcome.MOVED: "voice.moved",
               JoinOutcome.ALREADY: "voice.already"}[outcome]
        text = t(key, language, channel=channel.mention)
        await self._answer(interaction, text + note)

    @app_commands.command(name="leave")
    @app_commands.guild_only()
    @guild_only_check
    async def leave(self, interaction: discord.Interaction) -> None:
        """Send me out of the voice channel; I stop listening at once."""
        assert interaction.guild_id is not None
        language = self._lang(interaction)
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
        language = self._lang(interaction)
        try:
            gv = self.manager.connection(interaction.guild_id)
            if gv is None:
                raise VoiceCommandError("transcript.no_call")
            self._require_in_call(interaction, gv.channel, "transcript.join_first")
            data, name, cut = await self.manager.transcript(interaction.guild_id, language=language)
        except VoiceCommandError as exc:
            await self._answer(interaction, exc.in_language(language))
            return
        note = t("transcript.here", language)
        if cut:
            note += " " + t("transcript.cut", language)
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
        language = self._lang(interaction)
        try:
            gv = self.manager.connection(interaction.guild_id)
            if gv is None:
                raise VoiceCommandError("voice.not_in_channel_use_join")
            self._require_in_call(interaction, gv.channel, "say.join_first")
            if not text.strip():
                raise VoiceCommandError("say.empty")
            await interaction.response.defer(ephemeral=True, thinking=True)
            result = await self.manager.say(interaction.guild_id, text)
        except VoiceCommandError as exc:
            await self._answer(interaction, exc.in_language(language))
            return
        if result is None:
            key = "say.unpronounceable"
        elif result.interrupted:
            key = "say.interrupted"
        elif result.first_frame_at is None and result.total_seconds == 0:
            key = "say.posted"
        else:
            key = "say.done"
        await self._answer(interaction, t(key, language))

    @app_commands.command(name="listen")
    @app_commands.guild_only()
    @guild_only_check
    async def listen(self, interaction: discord.Interaction) -> None:
        """Push-to-talk: I answer what you say in the next 30 seconds."""
        language = self._lang(interaction)
        try:
            text = self.manager.listen(interaction.guild, interaction.user, language=language)
        except VoiceCommandError as exc:
            text = exc.in_language(language)
        await self._answer(interaction, text)

    # ------------------------------------------------------------------ settings

    @app_commands.command(name="mode")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @manage_server_check
    @app_commands.describe(mode="auto: anyone when alone, else when named; always; addressed; "
                                "push-to-talk: when asked; scribe: notes")
    async def mode(self, interaction: discord.Interaction,
                   mode: Literal["auto", "always", "addressed", "push-to-talk", "scribe"]) -> None:
        """Choose when I answer in voice in this server (needs Manage Server)."""
        assert interaction.guild_id is not None
        language = self._lang(interaction)
        try:
            gs = await self.manager.set_mode(interaction.guild_id, mode)
        except GuildSettingsError as exc:
            await self._answer(interaction, _settings_error(exc, language))
            return
        extra = " " + t("mode.listen_hint", language) if gs.mode == "push-to-talk" else ""
        await self._answer(interaction, f"{t('mode.set', language, mode=gs.mode)} "
                           f"{mode_explanation(gs.mode, self.manager.agent.character.name, language)}{extra}")

    @voice.command(name="list")
    @guild_only_check
    async def voice_list(self, interaction: discord.Interaction) -> None:
        """List the voices I can speak with."""
        assert interaction.guild_id is not None
        language = self._lang(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            voices = await self.manager.list_voices()
        except TTSError as exc:
            log.warning("could not list voices: %s", exc, extra={"guild_id": interaction.guild_id})
            await self._answer(interaction, _engine_failure(exc, language))
            return
        current = self.manager.guild_settings.get(interaction.guild_id).voice_id
        if not voices:
            await self._answer(interaction, t("voice.none_available", language))
            return
        lines = [f"{'▶ ' if v.id == current else '• '}**{discord.utils.escape_markdown(v.name)}** `{v.id}`"
                 + (f" — {v.description}" if v.description else "") for v in voices[:40]]
        if len(voices) > 40:
            lines.append(t("voice.list_more", language, count=len(voices) - 40))
        header = t("voice.list_header" if current else "voice.list_header_default", language)
        await self._answer(interaction, (header + "\n" + "\n".join(lines))[:2000])

    @voice.command(name="set")
    @manage_server_check
    @app_commands.describe(voice="A voice name or id, or 'default' for the character's own voice")
    async def voice_set(self, interaction: discord.Interaction, voice: app_commands.Range[str, 1, 128]) -> None:
        """Choose the voice I speak with in this server (needs Manage Server)."""
        assert interaction.guild_id is not None
        language = self._lang(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        wanted = voice.strip()
        chosen: str | None
        if wanted.lower() == RESET_VOICE:
            chosen, label = None, t("voice.default_label", language)
        else:
            try:
                voices = await self.manager.list_voices()
            except TTSError as exc:
                log.warning("could not list voices: %s", exc, extra={"guild_id": interaction.guild_id})
                await self._answer(interaction, _engine_failure(exc, language))
                return
            match = next((v for v in voices if v.id == wanted), None) or \
                next((v for v in voices if v.name.lower() == wanted.lower()), None)
            if voices and match is None:
                await self._answer(interaction, t("voice.unknown_voice", language,
                                                  name=isolate(discord.utils.escape_markdown(wanted))))
                return
            chosen, label = (match.id, match.name) if match else (wanted, wanted)
        try:
            await self.manager.set_voice(interaction.guild_id, chosen)
        except GuildSettingsError as exc:
            await self._answer(interaction, _settings_error(exc, language))
            return
        await self._answer(interaction, t("voice.set", language, name=isolate(discord.utils.escape_markdown(label))))

    @voice_set.autocomplete("voice")
    async def _voice_autocomplete(self, interaction: discord.Interaction,
                                  current: str) -> list[app_commands.Choice[str]]:
        try:
            voices = await self.manager.list_voices()
        except TTSError:
            voices = []
        return voice_choices(voices, current, language=self._lang(interaction))

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
        language = self._lang(interaction)
        try:
            listed = await self.manager.guild_settings.set_channel(interaction.guild_id, kind, channel.id, on)
        except GuildSettingsError as exc:
            await self._answer(interaction, _settings_error(exc, language))
            return
        names = ", ".join(f"<#{cid}>" for cid in sorted(listed)) or t("voice.list_none", language)
        if kind == AUTO_JOIN:
            text = t("voice.autojoin_list", language, channels=names)
        else:
            text = t("voice.allow_list", language, channels=names) if listed else t("voice.allow_any", language)
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
        language = self._lang(interaction)
        try:
            gs = await self.manager.update_settings(interaction.guild_id, **changes)
        except GuildSettingsError as exc:
            await self._answer(interaction, _settings_error(exc, language))
            return
        settings = self.manager.settings

        def say(key: str, **values: object) -> str:
            return t(key, language, **values)

        if gs.record_audio:
            recording = say("settings.recording_allowed" if settings.record_audio else "settings.recording_blocked")
        else:
            recording = say("settings.recording_off")
        idle = say("settings.leave_never") if gs.idle_leave_seconds == 0 else \
            say("settings.leave_after", seconds=gs.idle_leave_seconds)
        days = settings.transcript_retention_days
        lines = [say("settings.saved" if changes else "settings.current"),
                 say("settings.mode", mode=gs.mode),
                 say("settings.voice", voice=isolate(gs.voice_id) if gs.voice_id else "default"),
                 say("settings.transcript", state=say("settings.on" if gs.mirror_transcripts else "settings.off")),
                 say("settings.leave", when=idle), say("settings.recording", state=recording),
                 say("settings.autojoin",
                     channels=self._listed(interaction.guild_id, AUTO_JOIN) or say("settings.nowhere")),
                 say("settings.allowed",
                     channels=self._listed(interaction.guild_id, ALLOWED) or say("settings.any_channel")),
                 say("settings.bots", state=say("settings.bots_heard" if gs.include_bots else "settings.bots_ignored")),
                 say("settings.kept_days", days=days) if days else say("settings.kept_forever")]
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
        words = self._lang(interaction)
        text = status_summary(self.manager.status(interaction.guild_id), self.manager.providers,
                              bot_name=self.manager.agent.character.name,
                              language=self.manager.language_summary(interaction.guild, words=words), words=words)
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
