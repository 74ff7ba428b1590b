"""The built-in ELIZA: keyword ranking, decomposition, reflection, cycling, memory, quitting."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.agent.character import parse_character
from bot.agent.engines.base import Conversation, Incoming
from bot.agent.engines.eliza import Eliza, ElizaEngine, ElizaState, reflect, tokenize
from bot.memory import Modality


def test_reflection() -> None:
    assert reflect(["i", "am", "sad", "about", "my", "job"]) == "you are sad about your job"
    assert reflect(["you", "hate", "me"]) == "I hate you"
    assert reflect(["i", "think", "you", "are", "mean"]) == "you think I am mean"
    assert reflect(["hate", "you"]) == "hate me"


def test_tokenize_normalises() -> None:
    assert tokenize("I'm SAD, you’re   not!") == ["i", "am", "sad", ",", "you", "are", "not", "!"]
    assert tokenize("Are u a bot?") == ["are", "you", "a", "computer", "?"]


def test_decomposition_and_reassembly_with_name() -> None:
    eliza, state = Eliza("Wren"), ElizaState()
    assert eliza.respond("Hello!", state) == "Hello, I'm Wren. What's on your mind?"
    assert eliza.respond("what is your name?", state) == "I'm Wren."
    assert eliza.respond("Are you a bot?", state) == "Yes, I'm Wren, a computer program. Does that bother you?"
    assert eliza.respond("I want a New York pizza", state) == "What would it mean to you if you got a New York pizza?"
    assert eliza.respond("I am so sad today", state) == "I'm sorry to hear that you are sad."
    assert eliza.respond("my name is Alice", state) == "Nice to meet you, Alice. What's on your mind?"


def test_keyword_rank_decides() -> None:
    eliza, state = Eliza("Wren"), ElizaState()
    # "computer" (rank 50) outranks "i" and "my"
    assert "computer" in eliza.respond("I think my computer hates me", state).lower()
    # the clause with the best keyword is the one answered
    assert eliza.respond("Well. My sister called", state) == "Tell me more about your family."


def test_templates_cycle_deterministically() -> None:
    eliza, state = Eliza("Wren"), ElizaState()
    answers = [eliza.respond("I feel odd", state) for _ in range(5)]
    assert answers[0] != answers[1]
    assert answers[4] == answers[0]  # four templates, then round again
    again = Eliza("Wren")
    assert [again.respond("I feel odd", s) for s in [ElizaState()]] == [answers[0]]


def test_memory_stack_brings_earlier_remarks_back() -> None:
    eliza, state = Eliza("Wren"), ElizaState()
    eliza.respond("my boss ignores my ideas", state)
    answer = eliza.respond("zzz", state)  # nothing matches: a remembered remark comes back
    assert answer == "Earlier you mentioned your boss ignores your ideas. Tell me more about that."
    assert eliza.respond("zzz", state) == "Please, go on."


def test_quit_words_and_empty_input() -> None:
    eliza, state = Eliza("Wren"), ElizaState()
    assert eliza.respond("ok bye", state) == "Goodbye. Thanks for talking with me."
    assert eliza.respond("", state)
    assert eliza.respond("?!...", state)


async def test_engine_streams_per_room_and_checks() -> None:
    engine = ElizaEngine("Wren")
    character = parse_character({"name": "Wren"})

    def conv(room: str, text: str) -> Conversation:
        incoming = Incoming(room=room, speaker_id="console:me", speaker_name="me", text=text, modality=Modality.TEXT)
        return Conversation(character=character, incoming=incoming, text=text)

    deltas = [d async for d in engine.stream(conv("console", "I feel odd"))]
    assert len(deltas) > 1 and "".join(deltas) == "Tell me more about those feelings."
    # a different room has its own cycle position
    assert "".join([d async for d in engine.stream(conv("sms:+1555", "I feel odd"))]) == "Tell me more about those feelings."
    assert "".join([d async for d in engine.stream(conv("console", "I feel odd"))]) == "Do you often feel odd?"
    assert "built-in" in await engine.check()
    await engine.aclose()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_never_raises_and_always_answers(text: str) -> None:
    eliza = Eliza("Wren")
    state = ElizaState()
    for _ in range(2):
        answer = eliza.respond(text, state)
        assert isinstance(answer, str) and answer.strip()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["i", "you", "my", "me", "am", "are", "is", "like", "mother", "want",
                                 "sad", "remember", "if", ",", ".", "why", "can't", "name", "x"]),
                max_size=120))
def test_never_raises_on_keyword_soup(words: list[str]) -> None:
    engine = ElizaEngine("")
    assert engine.respond("room", " ".join(words)).strip()
