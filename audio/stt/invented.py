"""Text a recognizer invents: what Whisper-family models write over silence, noise and music.

Whisper was trained on subtitled video, so on audio with no speech in it it often writes the lines
that close a video ("Thank you for watching", "Please subscribe", "Subtitles by the Amara.org
community"), in whatever language it guessed. Such a line is never a turn. Three rules, each counted
by name so an operator can see what was dropped:

- ``phrase``: the whole transcript is one of those closing lines (or several of them), in any of the
  languages below, after folding case, accents and punctuation;
- ``non_speech``: the voice-activity detector found (almost) no speech in the audio it came from;
- ``low_confidence``: a single word below the word threshold (a cough read as "you"), or any
  transcript below the overall threshold (Whisper's fluent inventions over babble or music score
  well under what it gives real speech);
- ``no_words``: nothing but punctuation (Whisper writes "." over music);
- ``repetition``: one phrase said three times or more in a row and nothing else ("and now the one
  that was left zero and now the one that was left zero and now…"): Whisper's decoding loop on
  noise, which its own reference decoder catches as text that compresses too well.

Synchronous, no I/O: the voice session calls :meth:`InventedTextFilter.check` on every final.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

__all__ = ["InventedTextFilter", "KNOWN_PHRASES"]

# Lines Whisper is known to produce over silence or noise, grouped by language. Matching is on the
# folded text of the whole transcript, so a person who says "thanks for watching" inside a longer
# sentence is never dropped.
KNOWN_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        "thank you for watching", "thanks for watching", "thank you so much for watching",
        "thank you very much for watching", "thank you for listening", "thanks for listening",
        "please subscribe", "please subscribe to my channel", "like and subscribe",
        "don't forget to like and subscribe", "subscribe to my channel",
        "subtitles by the amara.org community", "subtitles by amara.org",
        "transcription by castingwords", "see you in the next video", "see you next time",
        "thank you", "thanks", "you", "bye", "bye bye",
    ),
    "de": (
        "vielen dank fürs zuschauen", "danke fürs zuschauen", "untertitel im auftrag des zdf",
        "untertitel der amara.org-community", "untertitel von stephanie geiges",
        "bis zum nächsten mal", "abonniert den kanal", "tschüss", "danke",
    ),
    "fr": (
        "merci d'avoir regardé", "merci d'avoir regardé cette vidéo", "merci de votre attention",
        "sous-titres réalisés par la communauté d'amara.org", "sous-titrage st' 501",
        "abonnez-vous", "à bientôt", "merci",
    ),
    "es": (
        "gracias por ver", "gracias por ver el video", "gracias por ver el vídeo",
        "subtítulos realizados por la comunidad de amara.org", "suscríbete al canal",
        "no olvides suscribirte", "hasta la próxima", "gracias",
    ),
    "pt": (
        "obrigado por assistir", "obrigada por assistir", "legendas pela comunidade amara.org",
        "inscreva-se no canal", "até a próxima", "obrigado",
    ),
    "it": (
        "grazie per la visione", "sottotitoli creati dalla comunità amara.org",
        "iscriviti al canale", "alla prossima", "grazie",
    ),
    "nl": ("bedankt voor het kijken", "ondertiteld door de amara.org gemeenschap", "ondertiteling tv gelderland"),
    "pl": ("dziękuję za obejrzenie", "napisy stworzone przez społeczność amara.org", "subskrybuj kanał"),
    "ru": ("спасибо за просмотр", "субтитры сделал dimatorzok", "субтитры создавал dimatorzok",
           "продолжение следует", "подписывайтесь на канал"),
    "ja": ("ご視聴ありがとうございました", "ご視聴ありがとうございます", "チャンネル登録よろしくお願いします",
           "おやすみなさい"),
    "zh": ("谢谢观看", "感谢观看", "字幕由amara.org社区提供", "请不吝点赞 订阅 转发 打赏支持明镜与点点栏目",
           "優優獨播劇場 youyoutvs.com", "明镜需要您的支持 欢迎订阅明镜"),
    "ko": ("시청해주셔서 감사합니다", "구독과 좋아요 부탁드립니다", "mbc 뉴스 이덕영입니다"),
    "ar": ("شكرا للمشاهدة", "اشترك في القناة", "ترجمة نانسي قنقر"),
    "tr": ("izlediğiniz için teşekkürler", "abone olmayı unutmayın"),
}

# Single words that are also plain answers ("thanks", "bye", "danke"): dropped only when the
# recognizer is unsure of them or the detector heard no speech, never for their text alone.
_SHORT_REPLIES = frozenset({"thank you", "thanks", "you", "bye", "bye bye", "danke", "tschuss", "merci",
                            "gracias", "obrigado", "grazie"})


def _fold(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text.casefold())
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    # Keep letters of every script and digits; everything else separates words.
    return " ".join(re.findall(r"\w+", folded))


_PHRASES: frozenset[str] = frozenset(
    _fold(p) for phrases in KNOWN_PHRASES.values() for p in phrases if _fold(p) not in {_fold(s) for s in _SHORT_REPLIES}
)
_SHORT: frozenset[str] = frozenset(_fold(s) for s in _SHORT_REPLIES)
_LONGEST = max(len(p.split()) for p in _PHRASES)


def _only_phrases(words: list[str]) -> bool:
    """Whether ``words`` splits entirely into known phrases (e.g. "thanks for watching please subscribe")."""
    n = len(words)
    ok = [False] * (n + 1)
    ok[0] = True
    for i in range(n):
        if not ok[i]:
            continue
        for j in range(i + 1, min(n, i + _LONGEST) + 1):
            if " ".join(words[i:j]) in _PHRASES:
                ok[j] = True
    return ok[n]


def _looped(words: list[str]) -> bool:
    """Whether ``words`` is mostly one phrase of four or more words said three times or more (Whisper's
    decoding loop on noise, often with a few words of its own around or between the repeats: "The
    first time I was a dealer, now I'm going to be a dealer, now I'm going to be a dealer, now…";
    "and they'll be able to play the game. They'll be able to play the game and they'll be able to
    play the game"). A person repeating a short phrase ("no no no", "the red one, the red one") or
    saying a sentence twice is kept."""
    words = words[:200]
    n = len(words)
    for size in range(4, n // 3 + 1):
        seen: dict[tuple[str, ...], list[int]] = {}
        for start in range(n - size + 1):
            positions = seen.setdefault(tuple(words[start:start + size]), [])
            if not positions or start >= positions[-1] + size:  # non-overlapping occurrences
                positions.append(start)
                if len(positions) >= 3 and len(positions) * size * 2 >= n:  # at least half of it
                    return True
    return False


class InventedTextFilter:
    """Decides whether a final transcript is invented text; counts what it dropped, by rule."""

    def __init__(self, *, min_word_confidence: float = 0.5, min_confidence: float = 0.35,
                 min_speech_ratio: float = 0.1) -> None:
        self.min_word_confidence = min_word_confidence
        self.min_confidence = min_confidence
        self.min_speech_ratio = min_speech_ratio
        self.dropped: Counter[str] = Counter()

    def check(self, text: str, *, confidence: float | None = None, speech_ratio: float | None = None) -> str | None:
        """The rule that drops ``text`` (``phrase``, ``non_speech``, ``low_confidence``, ``no_words``,
        ``repetition``), or None to keep it.

        ``confidence`` is the recognizer's (0–1) for the transcript, ``speech_ratio`` the share of its
        audio the voice-activity detector marked as speech; either may be unknown.
        """
        if not text.strip():
            return None
        folded = _fold(text)
        reason = "no_words" if not folded else self._reason(folded, confidence, speech_ratio)
        if reason is not None:
            self.dropped[reason] += 1
        return reason

    def _reason(self, folded: str, confidence: float | None, speech_ratio: float | None) -> str | None:
        words = folded.split()
        if speech_ratio is not None and speech_ratio < self.min_speech_ratio:
            return "non_speech"
        if _only_phrases(words):
            return "phrase"
        if _looped(words):
            return "repetition"
        if confidence is not None and confidence < self.min_confidence:
            return "low_confidence"
        if folded in _SHORT or len(words) == 1:
            if confidence is not None and confidence < self.min_word_confidence:
                return "low_confidence"
        return None
