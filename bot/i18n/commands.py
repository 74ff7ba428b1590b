"""Slash command names and descriptions in the bot's languages, through discord.py's Translator.

Discord shows each person the commands in their client's language (``name_localizations`` and
``description_localizations``, sent when commands are synced). Keys are the English texts the cogs
declare, so a cog needs no change; a text without a translation stays English (Discord's own
fallback). Only the most used commands get localised names (typing ``/sprache`` in a German client);
the rest keep their English name with a localised description.
"""

from __future__ import annotations

import logging

from discord import Locale, app_commands
from discord.app_commands import TranslationContextLocation, TranslationContextTypes, locale_str

from audio.languages import normalize_code

__all__ = ["CommandTranslator", "NAMES", "DESCRIPTIONS"]

log = logging.getLogger(__name__)

NAMES: dict[str, dict[str, str]] = {
    "join": {"de": "beitreten", "fr": "rejoindre", "es": "unirse", "pt": "entrar", "ja": "参加"},
    "leave": {"de": "verlassen", "fr": "quitter", "es": "salir", "pt": "sair", "ja": "退出"},
    "say": {"de": "sagen", "fr": "dire", "es": "decir", "pt": "dizer", "ja": "話す"},
    "status": {"de": "status", "fr": "statut", "es": "estado", "pt": "estado", "ja": "状態"},
    "language": {"de": "sprache", "fr": "langue", "es": "idioma", "pt": "idioma", "ja": "言語"},
    "transcript": {"de": "mitschrift", "fr": "transcription", "es": "transcripción", "pt": "transcrição",
                   "ja": "文字起こし"},
    "forget": {"de": "vergessen", "fr": "oublier", "es": "olvidar", "pt": "esquecer", "ja": "忘れる"},
}

DESCRIPTIONS: dict[str, dict[str, str]] = {
    "Bring me into your voice channel (or the one you name) to listen and talk.": {
        "de": "Hol mich in deinen Sprachkanal (oder den genannten), damit ich zuhöre und rede.",
        "fr": "Fais-moi venir dans ton salon vocal (ou celui indiqué) pour écouter et parler.",
        "es": "Tráeme a tu canal de voz (o al que indiques) para escuchar y hablar.",
        "pt": "Me traga para o seu canal de voz (ou o indicado) para ouvir e falar.",
        "ja": "あなたのボイスチャンネル（または指定したチャンネル）に呼んで、聞いて話せるようにします。",
    },
    "The voice channel to join (default: the one you're in)": {
        "de": "Der Sprachkanal (Standard: der, in dem du bist)",
        "fr": "Le salon vocal à rejoindre (par défaut : le tien)",
        "es": "El canal de voz (por defecto: en el que estás)",
        "pt": "O canal de voz (padrão: aquele em que você está)",
        "ja": "参加するボイスチャンネル（既定：あなたがいるチャンネル）",
    },
    "Send me out of the voice channel; I stop listening at once.": {
        "de": "Schick mich aus dem Sprachkanal; ich höre sofort auf zuzuhören.",
        "fr": "Fais-moi quitter le salon vocal ; j'arrête d'écouter tout de suite.",
        "es": "Sácame del canal de voz; dejo de escuchar al instante.",
        "pt": "Me tire do canal de voz; paro de ouvir na hora.",
        "ja": "ボイスチャンネルから退出させます。すぐに聞くのをやめます。",
    },
    "Get the transcript of the current voice call as a file (for people in the call).": {
        "de": "Die Mitschrift des laufenden Gesprächs als Datei (für alle im Gespräch).",
        "fr": "La transcription de l'appel en cours, en fichier (pour les personnes présentes).",
        "es": "La transcripción de la llamada actual en un archivo (para quienes están en ella).",
        "pt": "A transcrição da chamada atual em arquivo (para quem está nela).",
        "ja": "現在の通話の文字起こしをファイルで受け取ります（通話中の人向け）。",
    },
    "Have me say something out loud in the voice channel I'm in.": {
        "de": "Lass mich im Sprachkanal etwas laut sagen.",
        "fr": "Fais-moi dire quelque chose à voix haute dans le salon vocal.",
        "es": "Haz que diga algo en voz alta en el canal de voz.",
        "pt": "Me faça dizer algo em voz alta no canal de voz.",
        "ja": "ボイスチャンネルで何かを読み上げさせます。",
    },
    "What I should say out loud": {
        "de": "Was ich laut sagen soll", "fr": "Ce que je dois dire à voix haute", "es": "Lo que debo decir en voz alta",
        "pt": "O que devo dizer em voz alta", "ja": "読み上げる内容",
    },
    "Push-to-talk: I answer what you say in the next 30 seconds.": {
        "de": "Push-to-Talk: Ich antworte auf das, was du in den nächsten 30 Sekunden sagst.",
        "fr": "Appuyer pour parler : je réponds à ce que tu dis dans les 30 prochaines secondes.",
        "es": "Pulsar para hablar: respondo a lo que digas en los próximos 30 segundos.",
        "pt": "Aperte para falar: respondo ao que você disser nos próximos 30 segundos.",
        "ja": "プッシュトゥトーク：これから30秒間に話したことに返事をします。",
    },
    "Choose when I answer in voice in this server (needs Manage Server).": {
        "de": "Wähle, wann ich auf diesem Server im Sprachkanal antworte (braucht Server verwalten).",
        "fr": "Choisis quand je réponds en vocal sur ce serveur (nécessite Gérer le serveur).",
        "es": "Elige cuándo respondo por voz en este servidor (requiere Gestionar servidor).",
        "pt": "Escolha quando respondo por voz neste servidor (requer Gerenciar servidor).",
        "ja": "このサーバーで音声で返事をするタイミングを選びます（サーバー管理が必要）。",
    },
    "Show my voice connection, encryption, packet counts, providers and last reply latency.": {
        "de": "Zeigt Sprachverbindung, Verschlüsselung, Paketzahlen, Dienste und die letzte Antwortzeit.",
        "fr": "Affiche la connexion vocale, le chiffrement, les paquets, les services et le dernier délai de réponse.",
        "es": "Muestra la conexión de voz, el cifrado, los paquetes, los servicios y la última latencia.",
        "pt": "Mostra a conexão de voz, a criptografia, os pacotes, os serviços e a última latência.",
        "ja": "音声接続、暗号化、パケット数、使用サービス、直近の応答時間を表示します。",
    },
    "Stop me from hearing you: your voice is ignored in every server, from now on.": {
        "de": "Ich höre dich nicht mehr: Deine Stimme wird ab jetzt auf allen Servern ignoriert.",
        "fr": "Je ne t'entends plus : ta voix est ignorée sur tous les serveurs, dès maintenant.",
        "es": "Dejo de oírte: tu voz se ignora en todos los servidores desde ahora.",
        "pt": "Paro de te ouvir: sua voz é ignorada em todos os servidores a partir de agora.",
        "ja": "あなたの声を聞かないようにします。今後すべてのサーバーで無視されます。",
    },
    "Let me hear you again in voice channels after an /optout.": {
        "de": "Lass mich dich nach einem /optout wieder hören.",
        "fr": "Laisse-moi t'entendre à nouveau après un /optout.",
        "es": "Deja que vuelva a oírte tras un /optout.",
        "pt": "Me deixe te ouvir de novo depois de um /optout.",
        "ja": "/optout の後、再びあなたの声を聞けるようにします。",
    },
    "Erase everything I remember about you (voice, text, and any linked phone).": {
        "de": "Löscht alles, was ich über dich weiß (Sprache, Text und verknüpfte Telefonnummer).",
        "fr": "Efface tout ce que je retiens de toi (voix, texte et téléphone lié).",
        "es": "Borra todo lo que recuerdo de ti (voz, texto y teléfono vinculado).",
        "pt": "Apaga tudo o que lembro de você (voz, texto e telefone vinculado).",
        "ja": "あなたについて覚えていることをすべて消去します（音声、テキスト、連携した電話）。",
    },
    "Choose the language I speak in this server, or auto to answer each person in theirs.": {
        "de": "Wähle die Sprache, die ich auf diesem Server spreche, oder auto für die Sprache jeder Person.",
        "fr": "Choisis la langue que je parle sur ce serveur, ou auto pour répondre à chacun dans la sienne.",
        "es": "Elige el idioma que hablo en este servidor, o auto para responder a cada uno en el suyo.",
        "pt": "Escolha o idioma que falo neste servidor, ou auto para responder cada pessoa no dela.",
        "ja": "このサーバーで話す言語を選びます。auto なら各自の言語で返事をします。",
    },
    "auto, default, or a language code such as de, fr, es, pt, ja": {
        "de": "auto, default oder ein Sprachkürzel wie de, fr, es, pt, ja",
        "fr": "auto, default ou un code de langue comme de, fr, es, pt, ja",
        "es": "auto, default o un código de idioma como de, fr, es, pt, ja",
        "pt": "auto, default ou um código de idioma como de, fr, es, pt, ja",
        "ja": "auto、default、または de、fr、es、pt、ja などの言語コード",
    },
    "List the voices I can speak with.": {
        "de": "Zeigt die Stimmen, mit denen ich sprechen kann.", "fr": "Liste les voix que je peux utiliser.",
        "es": "Lista las voces con las que puedo hablar.", "pt": "Lista as vozes com que posso falar.",
        "ja": "使える声の一覧を表示します。",
    },
    "Choose the voice I speak with in this server (needs Manage Server).": {
        "de": "Wähle meine Stimme auf diesem Server (braucht Server verwalten).",
        "fr": "Choisis ma voix sur ce serveur (nécessite Gérer le serveur).",
        "es": "Elige mi voz en este servidor (requiere Gestionar servidor).",
        "pt": "Escolha minha voz neste servidor (requer Gerenciar servidor).",
        "ja": "このサーバーでの声を選びます（サーバー管理が必要）。",
    },
    "Get a one-time code to text from your phone, linking it to your account.": {
        "de": "Hol dir einen Einmalcode, den du per SMS schickst, um dein Telefon zu verknüpfen.",
        "fr": "Obtiens un code à usage unique à envoyer par SMS pour lier ton téléphone.",
        "es": "Obtén un código de un solo uso para enviarlo por SMS y vincular tu teléfono.",
        "pt": "Receba um código de uso único para mandar por SMS e vincular seu telefone.",
        "ja": "電話から送るワンタイムコードを取得し、アカウントと連携します。",
    },
    "Unlink any phone number linked to your account.": {
        "de": "Hebt die Verknüpfung deiner Telefonnummer auf.", "fr": "Supprime le lien avec ton numéro de téléphone.",
        "es": "Desvincula cualquier número de teléfono de tu cuenta.", "pt": "Desvincula qualquer telefone da sua conta.",
        "ja": "アカウントに連携した電話番号の連携を解除します。",
    },
}


class CommandTranslator(app_commands.Translator):
    """Serves ``NAMES`` and ``DESCRIPTIONS`` for the locales the bot ships (de, fr, es, pt, ja)."""

    async def translate(self, string: locale_str, locale: Locale, context: TranslationContextTypes) -> str | None:
        code = normalize_code(locale.value)
        if code is None or code == "en":
            return None
        if context.location in (TranslationContextLocation.command_name, TranslationContextLocation.group_name):
            return NAMES.get(string.message, {}).get(code)
        if context.location in (TranslationContextLocation.command_description,
                                TranslationContextLocation.group_description,
                                TranslationContextLocation.parameter_description):
            return DESCRIPTIONS.get(string.message, {}).get(code)
        return None
