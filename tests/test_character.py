"""Character files: ElizaOS shapes load unchanged; broken files name the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bot.agent.character import (
    Character,
    CharacterError,
    CharacterVoice,
    ExampleMessage,
    default_character,
    load_character,
    parse_character,
)

# Shaped like a real ElizaOS v0 character file (fields and types; the words are ours).
ELIZA_V0: dict[str, Any] = {
    "name": "Tess",
    "username": "tess_bot",
    "clients": ["discord", "direct"],
    "modelProvider": "openai",
    "plugins": [],
    "imageModelProvider": "openai",
    "settings": {
        "secrets": {"OPENAI_API_KEY": "not-read"},
        "voice": {
            "model": "en_US-hfc_female-medium",
            "elevenlabs": {
                "voiceId": "abc123",
                "model": "eleven_multilingual_v2",
                "stability": "0.4",
                "similarityBoost": "0.8",
                "style": "0.1",
                "useSpeakerBoost": "false",
            },
        },
    },
    "system": "Play Tess, a lighthouse keeper.",
    "bio": ["keeps a lighthouse", "  reads sea charts  ", ""],
    "lore": ["once rowed through a storm"],
    "knowledge": ["the lamp turns every ten seconds"],
    "messageExamples": [
        [
            {"user": "{{user1}}", "content": {"text": "Is the light on?"}},
            {"user": "Tess", "content": {"text": "Always, after dusk.", "action": "NONE"}},
        ],
        [
            {"user": "{{user1}}", "content": {"text": "Show me the charts"}},
            {"user": "Tess", "content": {"text": "", "action": "SHOW_CHARTS"}},
        ],
    ],
    "postExamples": ["the sea was loud today"],
    "topics": ["tides", "ships"],
    "style": {"all": ["be brief"], "chat": ["be kind"], "post": ["be wry"]},
    "adjectives": ["steady", "dry-humoured"],
    "twitterProfile": {"id": "x"},
}

# ElizaOS v1: `name` in examples, knowledge objects, bio as a string, no lore.
ELIZA_V1: dict[str, Any] = {
    "name": "Orbit",
    "plugins": ["@elizaos/plugin-sql", "@elizaos/plugin-openai"],
    "secrets": {},
    "settings": {"ELEVENLABS_VOICE_ID": "flat-voice", "ELEVENLABS_VOICE_STABILITY": 0.3, "avatar": "x.png"},
    "bio": "A satellite that likes to chat.",
    "knowledge": ["orbits take 90 minutes", {"path": "docs/a.md", "shared": False}, {"directory": "kb"}],
    "messageExamples": [
        [
            {"name": "{{name1}}", "content": {"text": "Where are you now?"}},
            {"name": "Orbit", "content": {"text": "Over the Pacific."}},
        ]
    ],
    "style": {"all": ["short"], "chat": []},
    "templates": {"messageHandlerTemplate": "..."},
}


def write(tmp_path: Path, data: Any, name: str = "x.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_eliza_v0_file_loads_unchanged(tmp_path: Path) -> None:
    c = load_character(write(tmp_path, ELIZA_V0))
    assert c.name == "Tess" and c.username == "tess_bot"
    assert c.bio == ("keeps a lighthouse", "reads sea charts")
    assert c.lore == ("once rowed through a storm",)
    assert c.system == "Play Tess, a lighthouse keeper."
    assert c.style_all == ("be brief",) and c.style_chat == ("be kind",) and c.style_post == ("be wry",)
    assert c.topics == ("tides", "ships") and c.adjectives == ("steady", "dry-humoured")
    # the action-only example line is dropped; the conversation keeps its spoken line
    assert c.message_examples == (
        (ExampleMessage("{{user1}}", "Is the light on?"), ExampleMessage("Tess", "Always, after dusk.")),
        (ExampleMessage("{{user1}}", "Show me the charts"),),
    )
    assert c.voice == CharacterVoice(voice_id="abc123", model="eleven_multilingual_v2", stability=0.4,
                                     similarity_boost=0.8, style=0.1, use_speaker_boost=False)
    assert c.source.endswith("x.json")


def test_eliza_v1_file_loads_unchanged() -> None:
    c = parse_character(ELIZA_V1, "orbit.json")
    assert c.bio == ("A satellite that likes to chat.",)
    assert c.knowledge == ("orbits take 90 minutes",)  # path/directory sources ignored
    assert c.message_examples[0][0] == ExampleMessage("{{name1}}", "Where are you now?")
    assert c.voice == CharacterVoice(voice_id="flat-voice", stability=0.3)
    assert c.lore == () and c.system is None


def test_numbers_and_booleans_accepted_for_voice() -> None:
    data = {"name": "N", "settings": {"voice": {"elevenlabs": {"voiceId": "v", "stability": 0.5,
                                                               "useSpeakerBoost": True}}}}
    assert parse_character(data).voice == CharacterVoice(voice_id="v", stability=0.5, use_speaker_boost=True)
    assert parse_character({"name": "N", "settings": {"voice": {"model": "vits"}}}).voice is None


def test_flat_message_examples_read_as_one_conversation() -> None:
    c = parse_character({"name": "N", "messageExamples": [
        {"user": "{{user1}}", "content": {"text": "hi"}}, {"user": "N", "content": {"text": "hello"}}]})
    assert c.message_examples == ((ExampleMessage("{{user1}}", "hi"), ExampleMessage("N", "hello")),)


def test_character_is_immutable() -> None:
    c = parse_character({"name": "N"})
    with pytest.raises(AttributeError):
        c.name = "M"  # type: ignore[misc]
    assert isinstance(c, Character)


@pytest.mark.parametrize(
    ("data", "field", "problem"),
    [
        ({}, "name", "is required"),
        ({"name": 3}, "name", "expected a string, got a number"),
        ({"name": "  "}, "name", "must not be empty"),
        ({"name": "N", "bio": 5}, "bio", "expected a string or a list of strings, got a number"),
        ({"name": "N", "bio": ["ok", {"x": 1}]}, "bio[1]", "expected a string, got an object"),
        ({"name": "N", "lore": "one long string"}, "lore", "expected a list of strings, got a string"),
        ({"name": "N", "adjectives": [1]}, "adjectives[0]", "expected a string, got a number"),
        ({"name": "N", "style": ["be brief"]}, "style", "expected an object"),
        ({"name": "N", "style": {"chat": "be kind"}}, "style.chat", "expected a list of strings"),
        ({"name": "N", "messageExamples": {"a": 1}}, "messageExamples", "expected a list of conversations"),
        ({"name": "N", "messageExamples": [[{"content": {"text": "x"}}]]}, "messageExamples[0][0].user",
         '"user" or "name"'),
        ({"name": "N", "messageExamples": [[{"user": "u", "content": {"text": 7}}]]},
         "messageExamples[0][0].content.text", "expected a string, got a number"),
        ({"name": "N", "messageExamples": [[{"user": "u"}]]}, "messageExamples[0][0].content", "expected an object"),
        ({"name": "N", "messageExamples": ["hello"]}, "messageExamples[0]", "expected a list of messages"),
        ({"name": "N", "system": ["x"]}, "system", "expected a string, got a list"),
        ({"name": "N", "settings": []}, "settings", "expected an object"),
        ({"name": "N", "settings": {"voice": {"elevenlabs": {"stability": "loud"}}}},
         "settings.voice.elevenlabs.stability", "expected a number between 0 and 1, got 'loud'"),
        ({"name": "N", "settings": {"voice": {"elevenlabs": {"similarityBoost": 7}}}},
         "settings.voice.elevenlabs.similarityBoost", "got 7"),
        ({"name": "N", "settings": {"voice": {"elevenlabs": {"useSpeakerBoost": "maybe"}}}},
         "settings.voice.elevenlabs.useSpeakerBoost", "expected true or false"),
        ({"name": "N", "settings": {"voice": {"elevenlabs": {"voiceId": 12}}}},
         "settings.voice.elevenlabs.voiceId", "expected a string"),
        # Accepted before, and failing later (a NUL ends C strings; PostgreSQL and TwiML refuse it).
        ({"name": "Wr\x00en"}, "name", "control character U+0000"),
        ({"name": "Wren\nBot"}, "name", "control character U+000A"),
        ({"name": "N", "bio": ["kind", "calm\x00"]}, "bio[1]", "NUL character"),
        ({"name": "N", "messageExamples": [[{"user": "u", "content": {"text": "hi\x00"}}]]},
         "messageExamples[0][0].content.text", "NUL character"),
    ],
)
def test_broken_fields_name_file_and_field(tmp_path: Path, data: Any, field: str, problem: str) -> None:
    path = write(tmp_path, data, "bad.json")
    with pytest.raises(CharacterError) as info:
        load_character(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert problem in message
    assert info.value.field == field


def test_invalid_json_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "name": "N",\n  "bio": ["a" "b"]\n}', "broken.json")
    with pytest.raises(CharacterError, match=r"broken\.json: invalid JSON at line 3, column 15"):
        load_character(path)


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    with pytest.raises(CharacterError, match=r"list\.json: expected a JSON object at the top level, got a list"):
        load_character(write(tmp_path, "[1, 2]", "list.json"))


def test_missing_file_and_binary_file(tmp_path: Path) -> None:
    with pytest.raises(CharacterError, match=r"nope\.json: cannot read the file"):
        load_character(tmp_path / "nope.json")
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CharacterError, match=r"bin\.json: not UTF-8"):
        load_character(binary)


def test_bom_and_empty_file(tmp_path: Path) -> None:
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"name": "B"}).encode())
    assert load_character(bom).name == "B"
    with pytest.raises(CharacterError, match=r"empty\.json: invalid JSON at line 1, column 1"):
        load_character(write(tmp_path, "", "empty.json"))


def test_default_character_ships_and_is_complete() -> None:
    c = default_character()
    assert c.name
    assert c.bio and c.adjectives and c.topics and c.style_all and c.style_chat and c.message_examples
    assert c.voice is not None and c.voice.voice_id
    assert c.source == "bot/characters/default.json"
