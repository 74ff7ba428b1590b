""""Forget what I just said": recognising the request, in the six languages the bot speaks.

A person may say or type the request in any room (voice channel, text channel, DM, SMS, phone call,
console); the agent then removes that person's previous turn in that room and what was drawn from it
(:meth:`bot.agent.Agent.reply`). The request itself is never stored and never reaches the engine.

The matcher is strict on purpose: a false match deletes something the person wanted kept, so the whole
utterance must *be* the request. It is folded (case, accents of Latin letters, punctuation), then
politeness ("please", "bitte", "por favor", …) is dropped wherever it stands, and a leading
interjection ("hey", "ok"), the bot's name or a trailing "thanks" from the ends; what remains must
match one language's grammar of the request from start to end (``fullmatch``). "Don't forget what I
just said", "did you forget what I just said?" and any longer sentence that merely contains the phrase
leave words outside that grammar, so they are answered as ordinary messages. No interjection that can
negate ("no", "não", "non", "nein") is dropped: "não esqueça o que eu acabei de dizer" means "don't
forget".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

__all__ = ["MAX_REQUEST_CHARS", "fold", "forget_request"]

MAX_REQUEST_CHARS = 160  # longer than any phrasing of the request: a long message is never one

_LATIN_MARKS = re.compile(r"[\u0300-\u036f]")  # combining accents of Latin letters (not Japanese voicing marks)
_NOT_WORD = re.compile(r"[^\w]+|_")


def fold(text: str) -> str:
    """Lower case, Latin accents and punctuation gone, one space between words (Japanese keeps its kana)."""
    text = unicodedata.normalize("NFKD", text.replace("’", "'"))
    text = unicodedata.normalize("NFC", _LATIN_MARKS.sub("", text)).casefold()
    return " ".join(_NOT_WORD.sub(" ", text).split())


# Politeness, dropped wherever it stands (it never changes what is asked).
_POLITE = re.compile(r"\b(?:please|pls|plz|bitte|por favor|porfa|porfavor|s il te plait|s il vous plait|stp|svp)\b")
# Interjections dropped at the start; none of them can negate the request.
_LEADING = ("hey", "hi", "ok", "okay", "oh", "um", "uh", "hmm", "actually", "sorry", "oops", "wait", "oye", "vale",
            "bueno", "perdon", "espera", "eh", "he", "bon", "pardon", "euh", "attends", "also", "ach", "ah",
            "hallo", "warte", "ei", "olha", "desculpa", "ola", "oi")
# Words dropped at the end.
_TRAILING = ("thanks", "thank you", "thx", "gracias", "merci", "danke", "obrigado", "obrigada", "ありがとう",
             "ありがとうございます")

# Each grammar: a verb that forgets takes what was said or a bare "that"; a verb that erases ("delete",
# "borra", "lösch", "apaga", "消して") only what was said: "delete that" may be about anything else.
_EN_SAID = (r"(?:about )?(?:what i (?:just )?(?:said|typed|wrote|sent|told you)|that last (?:message|bit|part|one)|"
            r"my last message|the last thing i (?:said|typed|wrote))")
_EN = re.compile(
    rf"(?:(?:can|could|would|will) you )?(?:just )?(?:forget (?:{_EN_SAID}|that)|(?:erase|delete) {_EN_SAID})"
    r"(?: just now| a moment ago)?(?: for me)?")
_ES_SAID = r"(?:lo que (?:te )?(?:acabo de (?:decir|escribir)|dije|escribi)(?: ahora)?|mi ultimo mensaje)"
_ES = re.compile(
    r"(?:(?:puedes|podrias|puede|podria) )?"
    rf"(?:(?:olvida|olvide|olvidar) (?:{_ES_SAID}|eso)|(?:borra|borre|borrar|elimina|elimine|eliminar) {_ES_SAID})")
_FR_SAID = (r"(?:ce que (?:je viens de (?:te |vous )?(?:dire|ecrire)|j ai (?:dit|ecrit)|je t ai dit|je vous ai dit)|"
            r"mon dernier message)")
_FR = re.compile(
    r"(?:(?:peux tu|pouvez vous|tu peux|vous pouvez) )?"
    rf"(?:(?:oublie|oubliez|oublier) (?:{_FR_SAID}|ca|cela)"
    rf"|(?:efface|effacez|effacer|supprime|supprimez|supprimer) {_FR_SAID})")
_DE_SAID = (r"(?:was ich (?:(?:dir|ihnen) )?(?:gerade|eben|grad)? ?(?:gesagt|geschrieben)(?: habe| hab)?|"
            r"meine letzte nachricht)")
_DE = re.compile(
    rf"(?:vergiss|vergessen sie) (?:{_DE_SAID}|das)|(?:losch|losche|loschen sie|loesche) {_DE_SAID}"
    rf"|(?:kannst du|konnen sie|konntest du|konnten sie) (?:(?:{_DE_SAID}|das) vergessen|{_DE_SAID} loschen)")
_PT_SAID = (r"(?:o que (?:eu )?(?:te )?(?:acabei de (?:dizer|escrever|falar)|disse|falei|escrevi)|"
            r"minha ultima mensagem)")
_PT = re.compile(
    r"(?:(?:pode|podes|voce pode|poderia) )?"
    rf"(?:(?:esquece|esqueca|esquecer) (?:{_PT_SAID}|isso)|(?:apaga|apague|apagar) {_PT_SAID})")
# Japanese has no spaces between words: the folded text is joined before matching.
_JA_NOW = r"(?:今|いま|さっき|先ほど|さきほど)"
_JA_SAID = rf"(?:{_JA_NOW}(?:の|のこと|の話)?|{_JA_NOW}?(?:言った|いった|話した|はなした|書いた|かいた)(?:こと)?)"
_JA_PLEASE = (r"(?:ください|下さい|くれ|ほしい|欲しい|くれる|くれますか|もらえる|もらえますか)?"
              r"(?:お願いします|おねがいします|お願い|おねがい)?")
_JA = re.compile(
    rf"(?:(?:{_JA_SAID}|それ)(?:は|を)?(?:忘れて|わすれて)|{_JA_SAID}(?:は|を)?(?:消して|けして|削除して)){_JA_PLEASE}")

_GRAMMARS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("en", _EN), ("es", _ES), ("fr", _FR), ("de", _DE), ("pt", _PT))


def _strip_ends(text: str, names: tuple[str, ...]) -> str:
    """``text`` without leading interjections and bot names, nor a trailing name or thanks."""
    for _ in range(6):  # "hey wren ok ..." at most a few words
        before = text
        for word in (*_LEADING, *names):
            if word and text.startswith(word + " "):
                text = text[len(word) + 1:]
        for word in (*_TRAILING, *names):
            if word and text.endswith(" " + word):
                text = text[: -len(word) - 1]
        if text == before:
            break
    return text


def forget_request(text: str, names: Iterable[str] = ()) -> str | None:
    """The language of ``text`` when all of it asks to forget what the person just said, else None.

    ``names``: the bot's names, which may lead or end the request ("Wren, forget that").
    """
    if len(text) > MAX_REQUEST_CHARS:
        return None
    folded = fold(text)
    if not folded:
        return None
    own = tuple(sorted({fold(n) for n in names if fold(n)}, key=len, reverse=True))
    words = " ".join(_POLITE.sub(" ", folded).split())
    words = _strip_ends(words, own)
    for language, grammar in _GRAMMARS:
        if grammar.fullmatch(words):
            return language
    joined = words.replace(" ", "")
    for name in own:
        bare = name.replace(" ", "")
        if bare and joined.startswith(bare) and len(joined) > len(bare):
            joined = joined[len(bare):]
    for polite in ("お願い", "おねがい"):
        if joined.startswith(polite) and len(joined) > len(polite) + 2:
            joined = joined[len(polite):]
    if _JA.fullmatch(joined):
        return "ja"
    return None
