"""Speech normalisation and streamed sentence splitting (audio/speech.py)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from audio.speech import SentenceSplitter, normalize_for_speech


def test_markdown_links_emoji_and_numbers() -> None:
    assert normalize_for_speech("**Hello** _there_! See https://www.example.com/x?y=1 😀") == \
        "Hello there! See a link to example.com"
    assert normalize_for_speech("[the docs](https://docs.example.org/a) say `pip install x`") == \
        "the docs say pip install x"
    assert normalize_for_speech("Pay 1234567 now. Call 5551234567.") == "Pay 1,234,567 now. Call 555 123 4567."
    assert normalize_for_speech("- one\n- two\n\n# Next\ntext <@123> <:wave:42> :smile:") == "one. two. Next. text"


def test_nothing_speakable_gives_empty_text() -> None:
    for text in ("", "   ", "😀🎉👍🏽", "```python\nprint(1)\n```", "<:a:1> <@2>", "---"):
        assert normalize_for_speech(text) == "", text


def test_code_blocks_are_left_out_but_the_prose_around_them_stays() -> None:
    assert normalize_for_speech("Run this:\n```sh\nrm -rf /tmp/x\n```\nThen restart.") == "Run this. Then restart."


def split_stream(deltas: list[str]) -> list[str]:
    splitter = SentenceSplitter()
    out: list[str] = []
    for delta in deltas:
        out.extend(splitter.feed(delta))
    return out + splitter.flush()


def test_sentences_come_out_as_soon_as_they_end() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Hello there") == []
    assert splitter.feed(". How") == ["Hello there."]
    assert splitter.feed(" are you?") == []  # could be "?!" or more: wait for the space
    assert splitter.feed(" Fine") == ["How are you?"]
    assert splitter.flush() == ["Fine"]


def test_abbreviations_decimals_and_code_do_not_end_sentences() -> None:
    assert split_stream(["Dr. Smith met Mr. Jones, e.g. at 3", ".14 pm. Next!"]) == \
        ["Dr. Smith met Mr. Jones, e.g. at 3.14 pm.", "Next!"]
    assert split_stream(["Use ```a. b. c.``` now. Ok"]) == ["Use ```a. b. c.``` now.", "Ok"]
    assert split_stream(["One\n\nTwo"]) == ["One", "Two"]


def test_a_long_sentence_is_cut_at_a_clause_to_start_speaking_sooner() -> None:
    long = "This sentence keeps going for quite a while without stopping, " * 3
    out = split_stream([long, "and ends here."])
    assert len(out) > 1 and out[0].endswith(",")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("ab .,!?\n`3Dr"), max_size=30), max_size=40))
def test_splitting_loses_nothing_and_never_raises(deltas: list[str]) -> None:
    out = split_stream(deltas)
    assert "".join("".join(deltas).split()) == "".join("".join(out).split())
    assert all(s.strip() for s in out)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_normalize_never_raises(text: str) -> None:
    assert isinstance(normalize_for_speech(text), str)
