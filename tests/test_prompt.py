"""Prompt assembly is pure, deterministic, and tells the model who is talking through what."""

from __future__ import annotations

from bot.agent.character import parse_character
from bot.agent.engines.base import Incoming
from bot.agent.prompt import MAX_LORE, build_messages, build_system_prompt, clip
from bot.facts.knowledge import KnowledgeIndex, chunks_of
from bot.memory import Modality, Turn

CHAR = parse_character(
    {
        "name": "Wren",
        "system": "You are {{agentName}}, a friendly companion.",
        "bio": ["a voice companion", "likes riddles"],
        "lore": [f"lore line {i}" for i in range(12)],
        "adjectives": ["warm", "curious"],
        "topics": ["music", "games"],
        "knowledge": [f"filler fact {i}" for i in range(10)] + ["the volcano Etna is in Sicily"],
        "style": {"all": ["be brief"], "chat": ["match energy"], "post": ["never in chat"]},
        "messageExamples": [
            [{"user": "{{user1}}", "content": {"text": "hi {{agentName}}"}},
             {"user": "Wren", "content": {"text": "hey {{user1}}"}}],
            [{"user": "{{user2}}", "content": {"text": "second example"}}],
            [{"user": "{{user1}}", "content": {"text": "third example"}}],
        ],
    }
)


def incoming(text: str = "hello", modality: Modality = Modality.TEXT, room: str = "discord:1:2",
             speaker: str = "discord:7", name: str = "Alice") -> Incoming:
    return Incoming(room=room, speaker_id=speaker, speaker_name=name, text=text, modality=modality)


def turn(text: str, *, role: str = "user", speaker: str = "discord:7", name: str = "Alice",
         interrupted: bool = False) -> Turn:
    return Turn(room="discord:1:2", speaker_id=speaker, speaker_name=name, role=role, text=text,
                modality=Modality.TEXT, created_at=0.0, interrupted=interrupted)


def test_structure_and_character_content() -> None:
    history = [turn("earlier question"), turn("earlier answer", role="assistant", speaker="agent", name="Wren")]
    messages = build_messages(CHAR, history, incoming("what now?"))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system = messages[0]["content"]
    assert system.startswith("You are Wren, a friendly companion.")
    for expected in ("a voice companion", "warm", "music", "be brief", "match energy"):
        assert expected in system
    assert "never in chat" not in system  # style.post is for social posts, not chat
    assert "{{" not in system  # placeholders are filled in
    assert messages[1]["content"] == "Alice: earlier question"
    assert messages[2]["content"] == "earlier answer"
    assert messages[3]["content"] == "Alice: what now?"
    assert sum(1 for i in range(12) if f"lore line {i}\n" in system + "\n") == MAX_LORE


def test_deterministic_for_same_input_and_varies_with_input() -> None:
    a = build_messages(CHAR, [], incoming("one"))
    assert a == build_messages(CHAR, [], incoming("one"))
    systems = {build_messages(CHAR, [], incoming(f"message {i}"))[0]["content"] for i in range(8)}
    assert len(systems) > 1  # lore/example sampling is seeded by the input


async def test_knowledge_is_recalled_by_the_ranker_not_listed() -> None:
    index = KnowledgeIndex(chunks_of(CHAR.knowledge))
    note = await index.prompt_note(incoming("tell me about the volcano Etna"))
    assert note is not None and "the volcano Etna is in Sicily" in note
    assert "filler fact" not in note  # "fact"/"filler" share no word with the question: not recalled
    system = build_system_prompt(CHAR, incoming("tell me about the volcano Etna"), notes=[note])
    assert "Things you know:\n- the volcano Etna is in Sicily" in system
    assert system.index("Things you know") < system.index("Alice is writing to you")
    # The character's knowledge is never in the prompt without being recalled for the message.
    assert "Etna" not in build_system_prompt(CHAR, incoming("tell me about the volcano Etna"))


def test_modalities_shape_the_instructions() -> None:
    voice = build_system_prompt(CHAR, incoming(modality=Modality.VOICE))
    assert "Alice is speaking to you in a Discord voice channel" in voice
    assert "spoken aloud" in voice and "no markdown" in voice
    sms = build_system_prompt(CHAR, incoming(modality=Modality.SMS, room="sms:+15551234567"))
    assert "Alice is texting you by SMS" in sms and "no markdown" in sms
    dm = build_system_prompt(CHAR, incoming(room="discord:dm:7"))
    assert "Alice is writing to you in a Discord direct message" in dm
    console = build_system_prompt(CHAR, incoming(room="console", name="me"))
    assert "me is writing to you in a terminal chat" in console


def test_group_rooms_are_flagged_and_names_kept() -> None:
    history = [turn("hi all", speaker="discord:8", name="Bob"), turn("hey", name="Alice")]
    messages = build_messages(CHAR, history, incoming("so?"))
    assert "Several people take part" in messages[0]["content"]
    assert messages[1]["content"] == "Bob: hi all"
    solo = build_messages(CHAR, [turn("hey")], incoming("so?"))
    assert "Several people" not in solo[0]["content"]


def test_speaker_names_are_sanitised() -> None:
    messages = build_messages(CHAR, [], incoming("x", name="Mal\nlory\t  the\r\nGreat"))
    assert messages[-1]["content"] == "Mal lory the Great: x"
    assert build_messages(CHAR, [], incoming("x", name="   "))[-1]["content"] == "Someone: x"


def test_interrupted_and_long_turns() -> None:
    history = [turn("a" * 50 + " " + "b" * 5000), turn("cut off reply", role="assistant", speaker="agent",
                                                        name="Wren", interrupted=True)]
    messages = build_messages(CHAR, history, incoming("and?"), text="shortened")
    assert len(messages[1]["content"]) < 2200 and "message cut" in messages[1]["content"]
    assert "interrupted" in messages[2]["content"]
    assert messages[-1]["content"] == "Alice: shortened"


def test_clip() -> None:
    assert clip("short", 10) == "short"
    long = "word " * 3000
    out = clip(long, 4000)
    assert len(out) < 4100 and out.endswith("characters long]") and "15,000" in out


def test_minimal_character() -> None:
    bare = parse_character({"name": "Bare"})
    messages = build_messages(bare, [], incoming("hi"))
    assert messages[0]["content"].startswith("You are Bare.")
    assert messages[-1] == {"role": "user", "content": "Alice: hi"}
