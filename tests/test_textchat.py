from __future__ import annotations

import re
from collections.abc import AsyncIterator

from hypothesis import given, settings, strategies as st

from bot.textchat import SHORTENED_NOTE, RateLimiter, StreamingWriter, cut_at_sentence, split_message


def _words(chunks: list[str]) -> list[str]:
    joined = " ".join(chunks)
    return [w for w in re.sub(r"```\w*", " ", joined).split()]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab c.\n!?`xyz"), min_size=0, max_size=6000))
def test_split_never_exceeds_the_limit_and_loses_nothing(text: str) -> None:
    chunks = split_message(text, 200)
    assert all(0 < len(c) <= 200 for c in chunks)
    original = [w for w in re.sub(r"```\w*", " ", text).split()]
    assert "".join(_words(chunks)) == "".join(original)


def test_short_text_is_one_message() -> None:
    assert split_message("  hello there  ") == ["hello there"]
    assert split_message("   ") == []


def test_prefers_paragraphs_then_sentences() -> None:
    para = "This is a sentence. " * 40
    chunks = split_message(para.strip() + "\n\n" + para.strip(), 1000)
    assert all(c.endswith(".") for c in chunks)
    assert len(chunks) == 2


def test_does_not_cut_inside_a_code_block_when_avoidable() -> None:
    prose = "Some words here. " * 60
    code = "```python\n" + "print('hi')\n" * 40 + "```"
    chunks = split_message(prose + "\n\n" + code, 1200)
    assert any(c.startswith("```python") and c.endswith("```") for c in chunks)
    assert all(c.count("```") % 2 == 0 for c in chunks)


def test_a_long_code_block_is_closed_and_reopened() -> None:
    code = "```js\n" + "let x = 1;\n" * 400 + "```"
    chunks = split_message(code)
    assert len(chunks) >= 3
    for chunk in chunks:
        assert chunk.startswith("```js\n") and chunk.endswith("```") and len(chunk) <= 2000


def test_no_boundary_at_all_still_splits() -> None:
    chunks = split_message("x" * 4500)
    assert [len(c) for c in chunks] == [1996, 1996, 508]


def test_rate_limiter_window_and_single_warning() -> None:
    now = [0.0]
    limiter = RateLimiter(limit=2, window=60.0, clock=lambda: now[0])
    assert limiter.check("u")[0] and limiter.check("u")[0]
    allowed, wait = limiter.check("u")
    assert not allowed and wait == 60.0
    assert limiter.should_warn("u") and not limiter.should_warn("u")
    assert limiter.check("other")[0]
    now[0] = 61.0
    assert limiter.check("u")[0]
    assert limiter.should_warn("u")  # a new window may warn again


class Recorder:
    """Stands in for a Discord channel: records sends and edits."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.events: list[tuple[str, int, str]] = []

    async def send(self, text: str) -> int:
        self.messages.append(text)
        self.events.append(("send", len(self.messages) - 1, text))
        return len(self.messages) - 1

    async def edit(self, handle: object, text: str) -> None:
        assert isinstance(handle, int)
        self.messages[handle] = text
        self.events.append(("edit", handle, text))


async def test_streaming_writer_shows_text_early_and_edits_as_it_grows() -> None:
    now = [0.0]
    channel = Recorder()
    writer = StreamingWriter(channel.send, channel.edit, clock=lambda: now[0])
    await writer.feed("Hel")
    assert channel.messages == []  # no complete sentence yet
    await writer.feed("lo there. How")
    assert channel.messages == ["Hello there. How"]
    await writer.feed(" are you?")  # within the edit interval: not shown yet
    assert channel.messages == ["Hello there. How"]
    now[0] = 1.5
    await writer.feed(" Fine.")
    assert channel.messages == ["Hello there. How are you? Fine."]
    await writer.finish()
    assert [e[0] for e in channel.events] == ["send", "edit"]


async def test_streaming_writer_continues_in_new_messages_past_the_limit() -> None:
    now = [0.0]
    channel = Recorder()
    writer = StreamingWriter(channel.send, channel.edit, clock=lambda: now[0], limit=100, max_messages=20)
    sentence = "Words make a sentence here. "
    for i in range(20):
        now[0] += 2
        await writer.feed(sentence)
    await writer.finish()
    assert all(len(m) <= 100 for m in channel.messages)
    assert " ".join(channel.messages).split() == (sentence * 20).split()


def test_a_block_continued_from_the_previous_message_ends_where_its_fence_closes() -> None:
    # The block is longer than a message, so the second message starts inside it; that message
    # should end at the block's closing fence, and no later message should reopen the block.
    code = "```py\n" + "x = 1\n" * 250 + "```\n\n"
    prose = "Plain words follow here. " * 40
    chunks = split_message(code + prose + "\n\n" + prose, 1000)
    assert [c.startswith("```py") for c in chunks] == [True, True, False, False, False]
    assert chunks[1].endswith("x = 1\n```")
    assert all(c.count("```") % 2 == 0 for c in chunks)


async def _endless(piece: str, pulled: list[int]) -> AsyncIterator[str]:
    """An agent that never stops talking; ``pulled`` counts what was taken from it."""
    while True:
        pulled[0] += 1
        yield piece


async def test_a_reply_longer_than_the_cap_is_cut_at_a_sentence_and_the_source_left_alone() -> None:
    channel = Recorder()
    writer = StreamingWriter(channel.send, channel.edit, max_messages=4)
    pulled = [0]
    source = _endless("This is one more sentence of an endless reply. ", pulled)
    await writer.stream(source)
    assert writer.capped
    assert len(channel.messages) == 4 and all(len(m) <= 2000 for m in channel.messages)
    assert channel.messages[-1].endswith("reply. " + SHORTENED_NOTE)
    assert all(SHORTENED_NOTE not in m for m in channel.messages[:-1])
    # It stopped reading soon after the cap: about 4 messages' worth, not more.
    assert pulled[0] * 48 < 5 * 2000
    # What memory gets is exactly what was shown, sentence-whole.
    shown = " ".join(channel.messages).replace(SHORTENED_NOTE, "")
    assert writer.delivered.split() == shown.split()
    assert writer.delivered.endswith("reply.")
    await source.aclose()


async def test_a_huge_code_block_is_capped_with_its_fences_closed() -> None:
    channel = Recorder()
    writer = StreamingWriter(channel.send, channel.edit, limit=500, max_messages=3)
    await writer.stream(_code(2000))
    assert writer.capped and len(channel.messages) == 3
    assert all(len(m) <= 500 and m.count("```") % 2 == 0 for m in channel.messages)
    assert channel.messages[-1].endswith("```\n" + SHORTENED_NOTE)


async def _code(lines: int) -> AsyncIterator[str]:
    yield "Here it is:\n```py\n"
    for _ in range(lines):
        yield "x = 1\n"
    yield "```\nDone."


def test_cut_at_sentence_prefers_sentences_then_words() -> None:
    assert cut_at_sentence("One two three. Four five six seven.", 20) == "One two three."
    assert cut_at_sentence("Short enough.", 50) == "Short enough."
    assert cut_at_sentence("First sentence here. Second one runs on and on", 30) == "First sentence here."
    assert cut_at_sentence("no sentence end at all in this text", 20) == "no sentence end at"
    assert cut_at_sentence("x" * 50, 20) == "x" * 20


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab c.\n!?`xyz"), min_size=0, max_size=3000),
       st.integers(min_value=1, max_value=4), st.integers(min_value=1, max_value=200))
async def test_capped_or_not_the_messages_stay_inside_the_limits(text: str, cap: int, step: int) -> None:
    channel = Recorder()
    writer = StreamingWriter(channel.send, channel.edit, limit=200, max_messages=cap, clock=lambda: 0.0)

    async def deltas() -> AsyncIterator[str]:
        for i in range(0, len(text), step):
            yield text[i:i + step]

    await writer.stream(deltas())
    assert len(channel.messages) <= cap
    assert all(len(m) <= 200 for m in channel.messages)
    shown = " ".join(channel.messages).replace(SHORTENED_NOTE, " ")
    assert _words([writer.delivered]) == _words([shown])
