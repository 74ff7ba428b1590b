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
    # -- every other command, group and subcommand (names are lower case, no spaces, unique per level) --
    "listen": {"de": "zuhören", "fr": "écouter", "es": "escuchar", "pt": "ouvir", "ja": "聞いて"},
    "mode": {"de": "modus", "fr": "mode", "es": "modo", "pt": "modo", "ja": "モード"},
    "voice": {"de": "stimme", "fr": "voix", "es": "voz", "pt": "voz", "ja": "声"},
    "list": {"de": "liste", "fr": "liste", "es": "lista", "pt": "lista", "ja": "一覧"},
    "set": {"de": "wählen", "fr": "choisir", "es": "elegir", "pt": "escolher", "ja": "選択"},
    "autojoin": {"de": "autobeitritt", "fr": "auto-rejoindre", "es": "autounirse", "pt": "autoentrar", "ja": "自動参加"},
    "allow": {"de": "erlauben", "fr": "autoriser", "es": "permitir", "pt": "permitir", "ja": "許可"},
    "settings": {"de": "einstellungen", "fr": "réglages", "es": "ajustes", "pt": "configurações", "ja": "設定"},
    "optout": {"de": "abmelden", "fr": "refuser", "es": "excluirme", "pt": "recusar", "ja": "オプトアウト"},
    "optin": {"de": "anmelden", "fr": "accepter", "es": "incluirme", "pt": "aceitar", "ja": "オプトイン"},
    "link": {"de": "verknüpfen", "fr": "lier", "es": "vincular", "pt": "vincular", "ja": "連携"},
    "phone": {"de": "telefon", "fr": "téléphone", "es": "teléfono", "pt": "telefone", "ja": "電話"},
    "unlink": {"de": "trennen", "fr": "délier", "es": "desvincular", "pt": "desvincular", "ja": "連携解除"},
    "memory": {"de": "gedächtnis", "fr": "mémoire", "es": "memoria", "pt": "memória", "ja": "記憶"},
    "show": {"de": "zeigen", "fr": "afficher", "es": "mostrar", "pt": "mostrar", "ja": "表示"},
    "usage": {"de": "verbrauch", "fr": "consommation", "es": "consumo", "pt": "consumo", "ja": "利用状況"},
}

DESCRIPTIONS: dict[str, dict[str, str]] = {
    "Show what this server used of the paid services today and this week, and who used most.": {
        "de": "Was dieser Server heute und diese Woche an bezahlten Diensten verbraucht hat, und wer am meisten.",
        "fr": "Montre ce que ce serveur a consommé en services payants aujourd'hui et cette semaine, et par qui.",
        "es": "Muestra lo que este servidor usó hoy y esta semana de los servicios de pago, y quién usó más.",
        "pt": "Mostra o que este servidor usou hoje e nesta semana dos serviços pagos, e quem usou mais.",
        "ja": "このサーバーが今日と今週に使った有料サービスの量と、多く使った人を表示します。",
    },
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
        "fr": "Affiche la connexion vocale, le chiffrement, les paquets, les services et le dernier délai.",
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
    "What I remember about you, and removing it.": {
        "de": "Was ich mir über dich merke, und es entfernen.",
        "fr": "Ce que je retiens de toi, et l'effacer.",
        "es": "Lo que recuerdo de ti, y borrarlo.",
        "pt": "O que lembro de você, e apagar.",
        "ja": "あなたについて覚えていることと、その削除。",
    },
    "See what I keep about you: facts, your messages by place, summaries (only you see it).": {
        "de": "Sieh, was ich über dich speichere: Fakten, Nachrichten nach Ort, Zusammenfassungen (nur für dich).",
        "fr": "Vois ce que je garde sur toi : faits, messages par endroit, résumés (visible par toi seul).",
        "es": "Mira lo que guardo sobre ti: datos, mensajes por lugar, resúmenes (solo tú lo ves).",
        "pt": "Veja o que guardo sobre você: fatos, mensagens por lugar, resumos (só você vê).",
        "ja": "あなたについて保存していること（事実、場所別のメッセージ、要約）を見ます（本人のみ表示）。",
    },
    "Remove one fact I learnt about you, or all of them (your messages stay).": {
        "de": "Entferne einen gelernten Fakt über dich oder alle (deine Nachrichten bleiben).",
        "fr": "Retire un fait appris sur toi, ou tous (tes messages restent).",
        "es": "Quita un dato aprendido sobre ti, o todos (tus mensajes se quedan).",
        "pt": "Remova um fato aprendido sobre você, ou todos (suas mensagens ficam).",
        "ja": "あなたについて覚えた事実を1つ、またはすべて削除します（メッセージは残ります）。",
    },
    "The fact's number from /memory show, or all": {
        "de": "Die Nummer des Fakts aus /memory show, oder all",
        "fr": "Le numéro du fait dans /memory show, ou all",
        "es": "El número del dato en /memory show, o all",
        "pt": "O número do fato em /memory show, ou all",
        "ja": "/memory show の事実の番号、または all",
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
    # -- /voice and its subcommands -------------------------------------------------------------
    "The voice the bot speaks with": {
        "de": "Die Stimme, mit der der Bot spricht", "fr": "La voix avec laquelle le bot parle",
        "es": "La voz con la que habla el bot", "pt": "A voz com que o bot fala", "ja": "ボットが話すときの声",
    },
    "A voice name or id, or 'default' for the character's own voice": {
        "de": "Name oder ID einer Stimme, oder 'default' für die eigene Stimme der Figur",
        "fr": "Nom ou identifiant d'une voix, ou 'default' pour la voix du personnage",
        "es": "Nombre o id de una voz, o 'default' para la voz propia del personaje",
        "pt": "Nome ou id de uma voz, ou 'default' para a voz do próprio personagem",
        "ja": "声の名前または ID。キャラクター本来の声なら 'default'",
    },
    "Choose voice channels I join by myself when the first person arrives (needs Manage Server).": {
        "de": "Sprachkanäle, denen ich von selbst beitrete, sobald jemand kommt (braucht Server verwalten).",
        "fr": "Choisis les salons vocaux que je rejoins seul quand quelqu'un arrive (Gérer le serveur).",
        "es": "Elige canales de voz a los que entro solo cuando llega alguien (requiere Gestionar servidor).",
        "pt": "Escolha canais de voz em que entro sozinho quando alguém chega (requer Gerenciar servidor).",
        "ja": "最初の人が来たときに自動で参加するボイスチャンネルを選びます（サーバー管理が必要）。",
    },
    "A voice channel": {
        "de": "Ein Sprachkanal", "fr": "Un salon vocal", "es": "Un canal de voz", "pt": "Um canal de voz",
        "ja": "ボイスチャンネル",
    },
    "Join it by myself when someone arrives (true) or not (false)": {
        "de": "Von selbst beitreten, wenn jemand kommt (true), oder nicht (false)",
        "fr": "Le rejoindre seul quand quelqu'un arrive (true) ou non (false)",
        "es": "Entrar solo cuando llegue alguien (true) o no (false)",
        "pt": "Entrar sozinho quando alguém chegar (true) ou não (false)",
        "ja": "誰かが来たら自動で参加する（true）かしない（false）か",
    },
    "Limit which voice channels I may be brought into; none listed means any (needs Manage Server).": {
        "de": "Begrenzt, in welche Sprachkanäle man mich holen darf; keine Liste = alle (Server verwalten).",
        "fr": "Limite les salons vocaux où l'on peut me faire venir ; aucun = tous (Gérer le serveur).",
        "es": "Limita a qué canales de voz me pueden traer; sin lista, a todos (requiere Gestionar servidor).",
        "pt": "Limita para quais canais de voz podem me chamar; sem lista, todos (requer Gerenciar servidor).",
        "ja": "呼び出せるボイスチャンネルを制限します。未指定ならすべて（サーバー管理が必要）。",
    },
    "Allow bringing me there (true) or not (false)": {
        "de": "Dorthin holen erlauben (true) oder nicht (false)", "fr": "M'y faire venir : autorisé (true) ou non (false)",
        "es": "Permitir traerme ahí (true) o no (false)", "pt": "Permitir me chamar para lá (true) ou não (false)",
        "ja": "そこへの呼び出しを許可する（true）かしない（false）か",
    },
    "Show or change this server's voice settings (needs Manage Server).": {
        "de": "Zeigt oder ändert die Spracheinstellungen dieses Servers (braucht Server verwalten).",
        "fr": "Affiche ou modifie les réglages vocaux de ce serveur (nécessite Gérer le serveur).",
        "es": "Muestra o cambia los ajustes de voz de este servidor (requiere Gestionar servidor).",
        "pt": "Mostra ou muda as configurações de voz deste servidor (requer Gerenciar servidor).",
        "ja": "このサーバーの音声設定を表示・変更します（サーバー管理が必要）。",
    },
    "Post who said what (and my replies) in the voice channel's chat": {
        "de": "Im Chat des Sprachkanals posten, wer was gesagt hat (und meine Antworten)",
        "fr": "Publier qui a dit quoi (et mes réponses) dans le chat du salon vocal",
        "es": "Publicar quién dijo qué (y mis respuestas) en el chat del canal de voz",
        "pt": "Publicar quem disse o quê (e minhas respostas) no chat do canal de voz",
        "ja": "誰が何を話したか（と私の返事）をボイスチャンネルのチャットに投稿する",
    },
    "Leave after this many seconds alone (0 = stay; at most 86400)": {
        "de": "Nach so vielen Sekunden allein gehen (0 = bleiben; höchstens 86400)",
        "fr": "Partir après ce nombre de secondes seul (0 = rester ; 86400 au plus)",
        "es": "Salir tras estos segundos a solas (0 = quedarse; como máximo 86400)",
        "pt": "Sair depois de tantos segundos sozinho (0 = ficar; no máximo 86400)",
        "ja": "一人になってから退出するまでの秒数（0 = 残る、最大 86400）",
    },
    "Allow saving voice audio to disk (also needs RECORD_AUDIO=true on the bot)": {
        "de": "Speichern von Sprachaudio erlauben (braucht auch RECORD_AUDIO=true beim Bot)",
        "fr": "Autoriser l'enregistrement audio sur disque (demande aussi RECORD_AUDIO=true)",
        "es": "Permitir guardar el audio de voz en disco (también requiere RECORD_AUDIO=true)",
        "pt": "Permitir salvar o áudio de voz em disco (também requer RECORD_AUDIO=true)",
        "ja": "音声をディスクに保存することを許可する（ボット側の RECORD_AUDIO=true も必要）",
    },
    "Hear other bots in the voice channel (music bots...); off: their audio is ignored unheard": {
        "de": "Andere Bots im Sprachkanal hören (Musikbots...); aus: ihr Audio wird ungehört ignoriert",
        "fr": "Entendre les autres bots du salon (bots de musique...) ; non : leur audio est ignoré",
        "es": "Oír a otros bots del canal (bots de música...); no: su audio se ignora sin oírlo",
        "pt": "Ouvir outros bots no canal (bots de música...); não: o áudio deles é ignorado",
        "ja": "ボイスチャンネルのほかのボット（音楽ボットなど）を聞く。オフなら無視します",
    },
    "auto: anyone when alone, else when named; always; addressed; push-to-talk: when asked; scribe: notes": {
        "de": "auto: allein jeder, sonst beim Namen; always; addressed; push-to-talk: auf Anfrage; scribe: Notizen",
        "fr": "auto : tous si seul, sinon si nommé ; always ; addressed ; push-to-talk : sur demande ; scribe",
        "es": "auto: todos si a solas, si no al nombrarme; always; addressed; push-to-talk: al pedirlo; scribe",
        "pt": "auto: todos se sozinho, senão ao ser chamado; always; addressed; push-to-talk: a pedido; scribe",
        "ja": "auto：一人なら誰にでも、それ以外は名前で。always、addressed、push-to-talk：頼まれたら、scribe：記録",
    },
    # -- /link -------------------------------------------------------------------------------------
    "Link another way of talking to me to your Discord account": {
        "de": "Verknüpfe einen anderen Weg, mit mir zu reden, mit deinem Discord-Konto",
        "fr": "Lie une autre façon de me parler à ton compte Discord",
        "es": "Vincula otra forma de hablar conmigo a tu cuenta de Discord",
        "pt": "Vincule outra forma de falar comigo à sua conta do Discord",
        "ja": "私と話す別の方法を Discord アカウントに連携します",
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
