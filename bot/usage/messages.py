"""What people are told when a daily limit is reached, in the catalog's six languages (bot.i18n).

Registered into :data:`bot.i18n.messages.MESSAGES` on import, so :func:`bot.i18n.catalog.t` (and the
phone service's ``<Say>``) finds them like any other message. ``{time}`` is when the bot listens
again (the next midnight UTC).
"""

from __future__ import annotations

import datetime as dt

from bot.i18n.catalog import t
from bot.i18n.messages import MESSAGES

__all__ = ["USAGE_MESSAGES", "resting_text", "until_text"]

USAGE_MESSAGES: dict[str, dict[str, str]] = {
    "usage.resting_person": {
        "en": "You've used today's allowance for talking with me, so I'm resting for you until {time}. Others can carry on.",
        "de": "Du hast dein Kontingent für heute aufgebraucht, also mache ich für dich Pause bis {time}. Die anderen können weitermachen.",
        "fr": "Tu as utilisé ta part pour aujourd'hui, alors je me repose pour toi jusqu'à {time}. Les autres peuvent continuer.",
        "es": "Ya usaste tu cupo de hoy, así que descanso contigo hasta las {time}. Los demás pueden seguir.",
        "pt": "Você já usou sua cota de hoje, então vou descansar para você até {time}. Os outros podem continuar.",
        "ja": "今日の利用枠を使い切ったので、{time}まであなたとの会話はお休みします。他の人はそのまま続けられます。",
    },
    "usage.resting_server": {
        "en": "This server has used today's allowance, so I'm resting here until {time}.",
        "de": "Dieser Server hat sein Kontingent für heute aufgebraucht, also mache ich hier Pause bis {time}.",
        "fr": "Ce serveur a utilisé sa part pour aujourd'hui, alors je me repose ici jusqu'à {time}.",
        "es": "Este servidor ya usó su cupo de hoy, así que descanso aquí hasta las {time}.",
        "pt": "Este servidor já usou a cota de hoje, então vou descansar aqui até {time}.",
        "ja": "このサーバーは今日の利用枠を使い切ったので、{time}までここではお休みします。",
    },
    "usage.resting_total": {
        "en": "I've used today's allowance for everyone, so I'm resting until {time}.",
        "de": "Ich habe das Kontingent für heute für alle aufgebraucht, also mache ich Pause bis {time}.",
        "fr": "J'ai utilisé la part de tout le monde pour aujourd'hui, alors je me repose jusqu'à {time}.",
        "es": "Ya usé el cupo de hoy para todos, así que descanso hasta las {time}.",
        "pt": "Já usei a cota de hoje para todos, então vou descansar até {time}.",
        "ja": "今日の全体の利用枠を使い切ったので、{time}までお休みします。",
    },
    "usage.call_over": {
        "en": "Sorry, I'm resting for this number until {time}. Please call again then. Goodbye.",
        "de": "Entschuldige, für diese Nummer mache ich Pause bis {time}. Ruf dann gern wieder an. Tschüss.",
        "fr": "Désolé, je me repose pour ce numéro jusqu'à {time}. Rappelle à ce moment-là. Au revoir.",
        "es": "Lo siento, descanso para este número hasta las {time}. Vuelve a llamar entonces. Adiós.",
        "pt": "Desculpe, estou descansando para este número até {time}. Ligue de novo depois. Tchau.",
        "ja": "申し訳ありません、この番号とは{time}までお休みしています。その後でおかけ直しください。失礼します。",
    },
    # /usage (amounts and units stay as numbers: min, chars, tokens)
    "usage.today": {
        "en": "**Today ({day}, UTC)**", "de": "**Heute ({day}, UTC)**", "fr": "**Aujourd'hui ({day}, UTC)**",
        "es": "**Hoy ({day}, UTC)**", "pt": "**Hoje ({day}, UTC)**", "ja": "**今日（{day}、UTC）**",
    },
    "usage.nothing_yet": {
        "en": "Nothing paid used yet.", "de": "Noch nichts Bezahltes verbraucht.",
        "fr": "Rien de payant consommé pour l'instant.", "es": "Todavía no se ha usado nada de pago.",
        "pt": "Nada pago usado ainda.", "ja": "有料サービスはまだ使われていません。",
    },
    "usage.of_limit": {
        "en": "of {limit} a day", "de": "von {limit} am Tag", "fr": "sur {limit} par jour",
        "es": "de {limit} al día", "pt": "de {limit} por dia", "ja": "（1日 {limit} まで）",
    },
    "usage.spend": {
        "en": "spend", "de": "Kosten", "fr": "dépense", "es": "gasto", "pt": "gasto", "ja": "費用",
    },
    "usage.last_days": {
        "en": "**Last {days} days**", "de": "**Letzte {days} Tage**", "fr": "**{days} derniers jours**",
        "es": "**Últimos {days} días**", "pt": "**Últimos {days} dias**", "ja": "**過去{days}日間**",
    },
    "usage.nothing": {
        "en": "nothing", "de": "nichts", "fr": "rien", "es": "nada", "pt": "nada", "ja": "なし",
    },
    "usage.top": {
        "en": "**Top people by share ({days} days)**", "de": "**Wer am meisten verbraucht hat ({days} Tage)**",
        "fr": "**Les plus gros consommateurs ({days} jours)**", "es": "**Quién usó más ({days} días)**",
        "pt": "**Quem mais usou ({days} dias)**", "ja": "**利用割合の多い人（{days}日間）**",
    },
}

for _key, _texts in USAGE_MESSAGES.items():
    MESSAGES.setdefault(_key, _texts)


def until_text(until: float) -> str:
    """``00:00 UTC`` (the date too when it is not the next midnight, after a clock jump)."""
    when = dt.datetime.fromtimestamp(until, dt.timezone.utc)
    return when.strftime("%H:%M UTC")


def resting_text(level: str, until: float, language: str | None) -> str:
    key = {"person": "usage.resting_person", "server": "usage.resting_server"}.get(level, "usage.resting_total")
    return t(key, language, time=until_text(until))
