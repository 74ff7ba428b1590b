from __future__ import annotations

from hypothesis import given, strategies as st

from audio.stt.invented import KNOWN_PHRASES, InventedTextFilter


def test_known_closing_lines_in_every_language_are_dropped() -> None:
    flt = InventedTextFilter()
    short = {"thank you", "thanks", "you", "bye", "bye bye", "danke", "tschüss", "merci", "gracias",
             "obrigado", "grazie"}
    for lang, phrases in KNOWN_PHRASES.items():
        for phrase in phrases:
            if phrase not in short:
                assert flt.check(phrase.capitalize() + "!") == "phrase", (lang, phrase)
    assert flt.check("Thank you for watching!") == "phrase"
    assert flt.check("Thanks for watching. Please subscribe.") == "phrase"
    assert flt.check("Untertitel im Auftrag des ZDF") == "phrase"
    assert flt.check("ご視聴ありがとうございました") == "phrase"
    assert flt.check("Sous-titres réalisés par la communauté d'Amara.org") == "phrase"
    assert flt.dropped["phrase"] >= 5


def test_real_speech_containing_the_words_is_kept() -> None:
    flt = InventedTextFilter()
    assert flt.check("Thank you for watching the kids yesterday") is None
    assert flt.check("Can you tell me about Lisbon?") is None
    assert flt.check("Thanks", confidence=0.95) is None  # a plain, confident answer
    assert flt.check("yes", confidence=None) is None
    assert sum(flt.dropped.values()) == 0


def test_unsure_single_words_and_non_speech_are_dropped() -> None:
    flt = InventedTextFilter(min_word_confidence=0.5, min_speech_ratio=0.1)
    assert flt.check("you", confidence=0.2) == "low_confidence"
    assert flt.check("Hmm.", confidence=0.3) == "low_confidence"
    assert flt.check("what a lovely day", speech_ratio=0.02) == "non_speech"
    assert flt.check("I'm not going to be able to do this, but I'm not going to be able to do this.",
                     confidence=0.22) == "low_confidence"
    assert flt.check("I was thinking about the weather in Lisbon.", confidence=0.8) is None
    assert flt.check(" . ") == "no_words" and flt.check("...!") == "no_words"
    assert flt.check("and now the one that was left zero and now the one that was left zero and now the one "
                     "that was left zero", confidence=0.6) == "repetition"
    assert flt.check("The first time I was a left-dealer, now I'm going to be a left-dealer, now I'm going to "
                     "be a left-dealer, now I'm going to be a left-dealer.", confidence=0.6) == "repetition"
    assert flt.check("and they'll be able to play the game last year. They'll be able to play the game last year "
                     "and they'll be able to play the game last year.", confidence=0.6) == "repetition"
    assert flt.check("I said no no no no, not that one", confidence=0.8) is None
    assert flt.check("I'm not going to be able to do this, but I'm not going to be able to do this.",
                     confidence=0.6) is None  # said twice: people do that
    assert flt.check("Take the red one, the red one, the red one is mine and the blue one is yours and the "
                     "green one is hers, and that is all I will say about it today", confidence=0.8) is None
    assert flt.check("bye bye", confidence=0.9) is None
    assert flt.dropped == {"low_confidence": 3, "non_speech": 1, "no_words": 2, "repetition": 3}


@given(st.text(max_size=200))
def test_never_raises(text: str) -> None:
    InventedTextFilter().check(text, confidence=0.4, speech_ratio=0.5)


async def test_the_session_drops_text_from_audio_marked_non_speech() -> None:
    from audio.stt.base import Transcript
    from tests.test_voice_session import FRAME, ScriptedEngine, ScriptedSTT, make_session

    stt = ScriptedSTT({1: []})
    session, memory, out = make_session(ScriptedEngine(["Hi."]), stt)
    heard: list = []
    session.on_turn = heard.append
    session.on_speech_start(1)
    session.on_audio(1, FRAME)
    stream = stt.streams["1"]
    stream.queue.put_nowait(Transcript(text="So what do you think", is_final=True, end_of_turn=True, start=0.0,
                                       end=2.0, speech_ratio=0.04))
    session.on_speech_end(1)  # the scripted recognizer answers the flush with an empty end of turn
    await session.wait_settled()
    assert heard == [] and out.played == [] and (await memory.count()) == 0
    assert session.invented.dropped == {"non_speech": 1}
    await session.aclose()
