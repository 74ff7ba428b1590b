from __future__ import annotations

from pathlib import Path

import pytest

from bot.settings import Secret, Settings, SettingsError, load_settings

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB"


def test_defaults_need_nothing() -> None:
    settings = load_settings({}, env_file=None)
    assert settings == Settings()
    assert settings.agent_engine == "auto" and settings.discord_token is None


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(
            {
                "DISCORD_TOKEN": "not a token",
                "DISCORD_DEV_GUILD_ID": "abc",
                "WEB_PORT": "70000",
                "VOICE_MODE": "sometimes",
                "OPENAI_BASE_URL": "localhost:11434",
                "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
            },
            env_file=None,
        )
    text = str(info.value)
    for name in ("DISCORD_TOKEN", "DISCORD_DEV_GUILD_ID", "WEB_PORT", "VOICE_MODE", "OPENAI_BASE_URL",
                 "TWILIO_AUTH_TOKEN"):
        assert name in text, name
    assert len(info.value.problems) == 6


def test_secrets_never_show() -> None:
    settings = load_settings({"DISCORD_TOKEN": TOKEN, "OPENAI_API_KEY": "sk-verysecretvalue123"}, env_file=None)
    for shown in (repr(settings), str(settings), f"{settings.openai_api_key}", repr(settings.discord_token)):
        assert TOKEN not in shown and "sk-verysecretvalue123" not in shown
    assert settings.discord_token is not None and settings.discord_token.get() == TOKEN
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(settings.openai_api_key)


def test_a_bad_secret_is_named_without_its_value() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"ELEVENLABS_API_KEY": "abc def-secret-part"}, env_file=None)
    assert "ELEVENLABS_API_KEY" in str(info.value)
    assert "secret-part" not in str(info.value)


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("OPENAI_MODEL=from-file\nCHAT_RATE_LIMIT=3\n# a comment\nVOICE_MODE=always\n")
    settings = load_settings({"OPENAI_MODEL": "from-env"}, env_file=env_file)
    assert settings.openai_model == "from-env"
    assert settings.chat_rate_limit == 3 and settings.voice_mode == "always"


def test_parsed_types() -> None:
    settings = load_settings(
        {
            "DISCORD_TOKEN": "Bot " + TOKEN,
            "DISCORD_CHAT_CHANNELS": "123456789012345678, 223456789012345678",
            "WAKE_PHRASES": "Hey Nova, nova",
            "DISCORD_SYNC_GLOBAL": "yes",
            "STT_SAMPLE_RATE": "48000",
            "DATA_DIR": "~/vb",
            "TWILIO_PHONE_NUMBER": "+1 555-123-4567",
            "TWILIO_ACCOUNT_SID": "AC" + "a" * 32,
            "TWILIO_AUTH_TOKEN": "f" * 32,
            "PUBLIC_URL": "https://bot.example.com/",
        },
        env_file=None,
    )
    assert settings.discord_token == Secret(TOKEN)
    assert settings.discord_chat_channels == frozenset({123456789012345678, 223456789012345678})
    assert settings.wake_phrases == ("hey nova", "nova")
    assert settings.discord_sync_global is True and settings.stt_sample_rate == 48000
    assert settings.data_dir == Path("~/vb").expanduser()
    assert settings.twilio_phone_number == "+15551234567"
    assert settings.public_url == "https://bot.example.com" and settings.sms_enabled


def test_cross_checks() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"AGENT_ENGINE": "elizaos", "STT_ENGINE": "deepgram", "SHARD_IDS": "2",
                       "SHARD_COUNT": "2"}, env_file=None)
    text = str(info.value)
    assert "ELIZAOS_URL" in text and "DEEPGRAM_API_KEY" in text and "SHARD_IDS lists shard 2" in text


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"CHARACTER_FILE": str(tmp_path / "nope.json")}, env_file=None)
    assert "CHARACTER_FILE" in str(info.value) and "nope.json" in str(info.value)


def test_env_example_lists_every_setting_with_a_comment() -> None:
    from bot.settings import ENV_VARS

    lines = (Path(__file__).parent.parent / ".env.example").read_text().splitlines()
    names = [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]
    assert sorted(names) == sorted(ENV_VARS)
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), f"{line} has no comment above it"
    # The example itself is a valid configuration.
    example = {k: v for k, v in (line.split("=", 1) for line in lines if line and not line.startswith("#"))}
    load_settings(example, env_file=None)


def test_a_settings_file_python_dotenv_cannot_read_is_named_with_its_line(tmp_path: Path) -> None:
    # python-dotenv skipped such a line with a warning naming no file: the token looked unset.
    env_file = tmp_path / ".env"
    env_file.write_text(f'OPENAI_MODEL=gpt\nDISCORD_TOKEN="{TOKEN}\nLOG_LEVEL=INFO\n')
    with pytest.raises(SettingsError) as info:
        load_settings({}, env_file=env_file)
    assert info.value.problems == [f"{env_file}: line 2: DISCORD_TOKEN: its \" quote is never closed; "
                                   "close it on the same line or remove the quotes"]
    env_file.write_text('OPENAI_MODEL=gpt\nVOICE_MODE="always" loud\n')
    with pytest.raises(SettingsError) as info:
        load_settings({}, env_file=env_file)
    assert info.value.problems == [f"{env_file}: line 2: VOICE_MODE: not a value dotenv can read (text after a "
                                   "closing quote?); write NAME=value, a comment after #"]


def test_a_settings_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".env").mkdir()
    with pytest.raises(SettingsError, match="is a directory, not a settings file"):
        load_settings({}, env_file=tmp_path / ".env")
    assert load_settings({}, env_file=tmp_path / "absent.env") == Settings()  # the default .env is optional


@pytest.mark.parametrize("url", ["http://exa mple.com", "http://example.com/v 1", "http://exam\tple.com",
                                 "https://user:pass@exa mple.com"])
def test_a_url_with_a_blank_is_refused_at_start(url: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"OPENAI_BASE_URL": url}, env_file=None)
    assert "OPENAI_BASE_URL: contains a space" in info.value.problems[0]
    assert "pass" not in str(info.value)
