"""Every message the bot writes or says in its own words, per language (see ``bot.i18n.catalog``).

Written for this project in English, German, French, Spanish, Portuguese (Brazilian) and
Japanese, in the bot's plain, friendly tone: short sentences, "you" addressed informally where
the language does so in chat (du, tu, tú, você), polite です/ます in Japanese. Discord markdown
(``**``, backticks) and command names stay as they are: commands are typed in English.
"""

from __future__ import annotations

__all__ = ["MESSAGES"]

MESSAGES: dict[str, dict[str, str]] = {
    # -- /language ---------------------------------------------------------------------------
    "language.set": {
        "en": "From now on I speak {language} in this server.",
        "de": "Ab jetzt spreche ich auf diesem Server {language}.",
        "fr": "Désormais, je parle {language} sur ce serveur.",
        "es": "A partir de ahora hablo {language} en este servidor.",
        "pt": "A partir de agora eu falo {language} neste servidor.",
        "ja": "これからこのサーバーでは{language}で話します。",
    },
    "language.auto": {
        "en": "From now on I answer in the language each person speaks. When I can't tell, I use {language}.",
        "de": "Ab jetzt antworte ich in der Sprache, in der man mich anspricht. Wenn ich sie nicht erkenne, nehme ich {language}.",
        "fr": "Désormais, je réponds dans la langue de chacun. Quand je n'arrive pas à la reconnaître, j'utilise le {language}.",
        "es": "A partir de ahora respondo en el idioma de cada persona. Si no lo reconozco, uso {language}.",
        "pt": "A partir de agora respondo no idioma de cada pessoa. Quando não consigo reconhecer, uso {language}.",
        "ja": "これからは話しかけられた言語で返事をします。判断できないときは{language}を使います。",
    },
    "language.current": {
        "en": "I speak {language} here ({source}). `/language` with `auto` or a language changes it.",
        "de": "Hier spreche ich {language} ({source}). Mit `/language` und `auto` oder einer Sprache änderst du das.",
        "fr": "Ici, je parle {language} ({source}). `/language` avec `auto` ou une langue permet de changer.",
        "es": "Aquí hablo {language} ({source}). Con `/language` y `auto` o un idioma lo cambias.",
        "pt": "Aqui eu falo {language} ({source}). Use `/language` com `auto` ou um idioma para mudar.",
        "ja": "ここでは{language}で話しています（{source}）。`/language` で `auto` か言語を指定すると変更できます。",
    },
    "language.set_sms": {
        "en": "Okay: from now on I'll text you in {language}. Send LANGUAGE auto to let me follow the language you write in.",
        "de": "Alles klar: Ab jetzt schreibe ich dir auf {language}. Schick LANGUAGE auto, dann richte ich mich nach deiner Sprache.",
        "fr": "D'accord : désormais je t'écris en {language}. Envoie LANGUAGE auto pour que je suive la langue dans laquelle tu écris.",
        "es": "De acuerdo: a partir de ahora te escribo en {language}. Envía LANGUAGE auto para que siga el idioma en que escribes.",
        "pt": "Certo: a partir de agora eu te escrevo em {language}. Mande LANGUAGE auto para eu acompanhar o idioma em que você escreve.",
        "ja": "わかりました。これからは{language}でメッセージを送ります。LANGUAGE auto と送ると、あなたが書く言語に合わせます。",
    },
    "language.source.set": {
        "en": "chosen by an admin", "de": "von einem Admin gewählt", "fr": "choisi par un admin",
        "es": "elegido por un admin", "pt": "escolhido por um admin", "ja": "管理者が設定",
    },
    "language.source.server": {
        "en": "the server's language", "de": "die Sprache des Servers", "fr": "la langue du serveur",
        "es": "el idioma del servidor", "pt": "o idioma do servidor", "ja": "サーバーの言語",
    },
    "language.source.auto": {
        "en": "the language each person speaks", "de": "die Sprache der jeweiligen Person",
        "fr": "la langue de chaque personne", "es": "el idioma de cada persona",
        "pt": "o idioma de cada pessoa", "ja": "話している人の言語",
    },
    "language.reset": {
        "en": "Back to the default: {language}.",
        "de": "Zurück zur Voreinstellung: {language}.",
        "fr": "Retour au réglage par défaut : {language}.",
        "es": "De vuelta al valor predeterminado: {language}.",
        "pt": "De volta ao padrão: {language}.",
        "ja": "既定の設定に戻しました：{language}。",
    },
    "language.unknown": {
        "en": "I don't know the language “{value}”. Use `auto`, `default`, or a code such as de, fr, es, pt or ja.",
        "de": "Die Sprache „{value}“ kenne ich nicht. Nimm `auto`, `default` oder ein Kürzel wie de, fr, es, pt oder ja.",
        "fr": "Je ne connais pas la langue « {value} ». Utilise `auto`, `default` ou un code comme de, fr, es, pt ou ja.",
        "es": "No conozco el idioma «{value}». Usa `auto`, `default` o un código como de, fr, es, pt o ja.",
        "pt": "Não conheço o idioma “{value}”. Use `auto`, `default` ou um código como de, fr, es, pt ou ja.",
        "ja": "「{value}」という言語はわかりません。`auto`、`default`、または de、fr、es、pt、ja などのコードを指定してください。",
    },
    "language.unsupported": {
        "en": "I can't speak that language ({code}) yet, so I'll answer in {language}.",
        "de": "Diese Sprache ({code}) spreche ich noch nicht, deshalb antworte ich auf {language}.",
        "fr": "Je ne parle pas encore cette langue ({code}), alors je réponds en {language}.",
        "es": "Todavía no hablo ese idioma ({code}), así que responderé en {language}.",
        "pt": "Ainda não falo esse idioma ({code}), então vou responder em {language}.",
        "ja": "その言語（{code}）はまだ話せないので、{language}で返事をします。",
    },
    "language.eliza_english_only": {
        "en": "I'm a simple built-in script that only understands English, so I can't really answer you in {language}. "
              "An admin can connect a language model to change that.",
        "de": "Ich bin ein einfaches eingebautes Skript und verstehe nur Englisch, deshalb kann ich dir auf {language} "
              "nicht richtig antworten. Ein Admin kann ein Sprachmodell anschließen, dann klappt das.",
        "fr": "Je ne suis qu'un petit script intégré qui ne comprend que l'anglais, je ne peux donc pas vraiment te "
              "répondre en {language}. Un admin peut brancher un modèle de langage pour changer ça.",
        "es": "Soy un sencillo guion integrado que solo entiende inglés, así que no puedo responderte bien en {language}. "
              "Un admin puede conectar un modelo de lenguaje para cambiarlo.",
        "pt": "Sou um roteiro simples embutido que só entende inglês, então não consigo te responder direito em {language}. "
              "Um admin pode conectar um modelo de linguagem para mudar isso.",
        "ja": "私は英語しかわからない簡単な内蔵スクリプトなので、{language}ではきちんとお答えできません。"
              "管理者が言語モデルを接続すれば話せるようになります。",
    },
    "language.local_stt_english_only": {
        "en": "Local speech recognition understands English only; other languages need Deepgram (DEEPGRAM_API_KEY).",
        "de": "Die lokale Spracherkennung versteht nur Englisch; für andere Sprachen braucht es Deepgram (DEEPGRAM_API_KEY).",
        "fr": "La reconnaissance vocale locale ne comprend que l'anglais ; les autres langues demandent Deepgram (DEEPGRAM_API_KEY).",
        "es": "El reconocimiento de voz local solo entiende inglés; para otros idiomas hace falta Deepgram (DEEPGRAM_API_KEY).",
        "pt": "O reconhecimento de voz local só entende inglês; outros idiomas precisam do Deepgram (DEEPGRAM_API_KEY).",
        "ja": "ローカル音声認識は英語のみ対応です。ほかの言語には Deepgram（DEEPGRAM_API_KEY）が必要です。",
    },
    # -- command errors ----------------------------------------------------------------------
    "command.guild_only": {
        "en": "Voice commands work only in a server, not in direct messages.",
        "de": "Sprachbefehle funktionieren nur auf einem Server, nicht in Direktnachrichten.",
        "fr": "Les commandes vocales ne marchent que sur un serveur, pas en message privé.",
        "es": "Los comandos de voz solo funcionan en un servidor, no en mensajes directos.",
        "pt": "Os comandos de voz só funcionam em um servidor, não em mensagens diretas.",
        "ja": "音声コマンドはサーバー内でのみ使えます。ダイレクトメッセージでは使えません。",
    },
    "command.needs_manage_server": {
        "en": "You need the **Manage Server** permission to change that.",
        "de": "Dafür brauchst du die Berechtigung **Server verwalten**.",
        "fr": "Il te faut la permission **Gérer le serveur** pour changer ça.",
        "es": "Necesitas el permiso **Gestionar servidor** para cambiar eso.",
        "pt": "Você precisa da permissão **Gerenciar servidor** para mudar isso.",
        "ja": "変更するには **サーバー管理** の権限が必要です。",
    },
    "voice.not_in_channel_here": {
        "en": "I'm not in a voice channel in this server.",
        "de": "Ich bin auf diesem Server in keinem Sprachkanal.",
        "fr": "Je ne suis dans aucun salon vocal sur ce serveur.",
        "es": "No estoy en ningún canal de voz de este servidor.",
        "pt": "Não estou em nenhum canal de voz deste servidor.",
        "ja": "このサーバーではボイスチャンネルに参加していません。",
    },
    "voice.left": {
        "en": "Left the voice channel. I'm no longer listening.",
        "de": "Ich habe den Sprachkanal verlassen und höre nicht mehr zu.",
        "fr": "J'ai quitté le salon vocal. Je n'écoute plus.",
        "es": "He salido del canal de voz. Ya no estoy escuchando.",
        "pt": "Saí do canal de voz. Não estou mais ouvindo.",
        "ja": "ボイスチャンネルから退出しました。もう聞いていません。",
    },
    "voice.you_are_not_in_voice": {
        "en": "You're not in a voice channel. Join one first, or tell me which: `/join channel:`.",
        "de": "Du bist in keinem Sprachkanal. Tritt erst einem bei oder sag mir, welchem: `/join channel:`.",
        "fr": "Tu n'es dans aucun salon vocal. Rejoins-en un d'abord, ou dis-moi lequel : `/join channel:`.",
        "es": "No estás en ningún canal de voz. Entra en uno primero o dime cuál: `/join channel:`.",
        "pt": "Você não está em um canal de voz. Entre em um primeiro ou me diga qual: `/join channel:`.",
        "ja": "ボイスチャンネルに参加していません。先に参加するか、`/join channel:` でチャンネルを指定してください。",
    },
    "voice.joined": {
        "en": "I'm in {channel} and listening. I posted a notice there about what I hear; `/leave` sends me away.",
        "de": "Ich bin in {channel} und höre zu. Dort steht ein Hinweis, was ich mitbekomme; `/leave` schickt mich weg.",
        "fr": "Je suis dans {channel} et j'écoute. J'y ai posté un message sur ce que j'entends ; `/leave` me fait partir.",
        "es": "Estoy en {channel} escuchando. Publiqué allí un aviso sobre lo que oigo; `/leave` me hace salir.",
        "pt": "Estou em {channel} ouvindo. Publiquei lá um aviso sobre o que eu escuto; `/leave` me faz sair.",
        "ja": "{channel} に参加して聞いています。何を聞くかはそこに投稿しました。`/leave` で退出させられます。",
    },
    "voice.moved": {
        "en": "Moved to {channel}.", "de": "Ich bin jetzt in {channel}.", "fr": "Je suis passé dans {channel}.",
        "es": "Me he movido a {channel}.", "pt": "Mudei para {channel}.", "ja": "{channel} に移動しました。",
    },
    "voice.already": {
        "en": "I'm already in {channel}.", "de": "Ich bin schon in {channel}.", "fr": "Je suis déjà dans {channel}.",
        "es": "Ya estoy en {channel}.", "pt": "Já estou em {channel}.", "ja": "すでに {channel} にいます。",
    },
    # -- the notice posted when the bot joins a voice channel --------------------------------
    "consent.title": {
        "en": "🎙️ **{bot} is now in {channel} and listening.**",
        "de": "🎙️ **{bot} ist jetzt in {channel} und hört zu.**",
        "fr": "🎙️ **{bot} est maintenant dans {channel} et écoute.**",
        "es": "🎙️ **{bot} está ahora en {channel} y escuchando.**",
        "pt": "🎙️ **{bot} está agora em {channel} e ouvindo.**",
        "ja": "🎙️ **{bot} が {channel} に参加し、聞いています。**",
    },
    "consent.stt_off": {
        "en": "Speech recognition is switched off: nobody's voice is transcribed.",
        "de": "Die Spracherkennung ist aus: Niemandes Stimme wird mitgeschrieben.",
        "fr": "La reconnaissance vocale est désactivée : la voix de personne n'est transcrite.",
        "es": "El reconocimiento de voz está desactivado: no se transcribe la voz de nadie.",
        "pt": "O reconhecimento de voz está desligado: a voz de ninguém é transcrita.",
        "ja": "音声認識はオフです。誰の声も文字起こしされません。",
    },
    "consent.stt_remote": {
        "en": "What you say here is sent to {stt} to be written down as text, and that text goes to {llm} to write a reply.",
        "de": "Was du hier sagst, geht an {stt} und wird dort zu Text; dieser Text geht an {llm}, das die Antwort schreibt.",
        "fr": "Ce que tu dis ici est envoyé à {stt} pour être transcrit, puis ce texte part vers {llm} qui écrit la réponse.",
        "es": "Lo que dices aquí se envía a {stt} para pasarlo a texto, y ese texto va a {llm} para escribir una respuesta.",
        "pt": "O que você diz aqui é enviado para {stt} para virar texto, e esse texto vai para {llm} escrever uma resposta.",
        "ja": "ここで話した内容は {stt} に送られて文字に起こされ、その文章は返事を書くために {llm} に渡されます。",
    },
    "consent.stt_local": {
        "en": "What you say here is handled by {stt} to be written down as text, and that text goes to {llm} to write a reply.",
        "de": "Was du hier sagst, wird von {stt} zu Text gemacht; dieser Text geht an {llm}, das die Antwort schreibt.",
        "fr": "Ce que tu dis ici est transcrit par {stt}, puis ce texte part vers {llm} qui écrit la réponse.",
        "es": "Lo que dices aquí lo pasa a texto {stt}, y ese texto va a {llm} para escribir una respuesta.",
        "pt": "O que você diz aqui vira texto com {stt}, e esse texto vai para {llm} escrever uma resposta.",
        "ja": "ここで話した内容は {stt} で文字に起こされ、その文章は返事を書くために {llm} に渡されます。",
    },
    "consent.tts": {
        "en": "Replies are spoken by {tts}.", "de": "Die Antworten spricht {tts}.",
        "fr": "Les réponses sont lues par {tts}.", "es": "Las respuestas las dice {tts}.",
        "pt": "As respostas são faladas por {tts}.", "ja": "返事は {tts} が読み上げます。",
    },
    "consent.recording_on": {
        "en": "⚠️ An admin enabled audio recording: voices in this channel are saved to disk.",
        "de": "⚠️ Ein Admin hat die Aufnahme eingeschaltet: Stimmen in diesem Kanal werden gespeichert.",
        "fr": "⚠️ Un admin a activé l'enregistrement : les voix de ce salon sont sauvegardées sur disque.",
        "es": "⚠️ Un admin activó la grabación: las voces de este canal se guardan en disco.",
        "pt": "⚠️ Um admin ativou a gravação: as vozes deste canal são salvas em disco.",
        "ja": "⚠️ 管理者が録音を有効にしています。このチャンネルの音声はディスクに保存されます。",
    },
    "consent.recording_off": {
        "en": "Audio is never saved.", "de": "Audio wird nie gespeichert.", "fr": "L'audio n'est jamais enregistré.",
        "es": "El audio nunca se guarda.", "pt": "O áudio nunca é salvo.", "ja": "音声は保存されません。",
    },
    "consent.retention_days": {
        "en": "Transcripts are kept for {days} day(s).",
        "de": "Mitschriften werden {days} Tag(e) aufbewahrt.",
        "fr": "Les transcriptions sont gardées {days} jour(s).",
        "es": "Las transcripciones se guardan {days} día(s).",
        "pt": "As transcrições são guardadas por {days} dia(s).",
        "ja": "文字起こしは{days}日間保存されます。",
    },
    "consent.retention_forever": {
        "en": "Transcripts are kept until someone asks to be forgotten.",
        "de": "Mitschriften bleiben, bis jemand verlangt, vergessen zu werden.",
        "fr": "Les transcriptions sont gardées jusqu'à ce que quelqu'un demande à être oublié.",
        "es": "Las transcripciones se guardan hasta que alguien pida ser olvidado.",
        "pt": "As transcrições são guardadas até alguém pedir para ser esquecido.",
        "ja": "文字起こしは、誰かが削除を求めるまで保存されます。",
    },
    "consent.mirror": {
        "en": "A transcript of the conversation is posted in this chat.",
        "de": "Eine Mitschrift des Gesprächs erscheint in diesem Chat.",
        "fr": "Une transcription de la conversation est publiée dans ce chat.",
        "es": "En este chat se publica una transcripción de la conversación.",
        "pt": "Uma transcrição da conversa é publicada neste chat.",
        "ja": "会話の文字起こしがこのチャットに投稿されます。",
    },
    "consent.optout": {
        "en": "Don't want to be heard? Use `/optout`: your voice is ignored from then on, and `/forget` erases what the "
              "bot remembers about you. `/optin` undoes the opt-out.",
        "de": "Du willst nicht gehört werden? Nutze `/optout`: Ab dann wird deine Stimme ignoriert, und `/forget` löscht, "
              "was der Bot über dich weiß. `/optin` macht das Opt-out rückgängig.",
        "fr": "Tu ne veux pas être écouté ? Utilise `/optout` : ta voix est ignorée à partir de là, et `/forget` efface "
              "ce que le bot retient de toi. `/optin` annule l'opt-out.",
        "es": "¿No quieres que te escuche? Usa `/optout`: desde entonces tu voz se ignora, y `/forget` borra lo que el bot "
              "recuerda de ti. `/optin` deshace el opt-out.",
        "pt": "Não quer ser ouvido? Use `/optout`: a partir daí sua voz é ignorada, e `/forget` apaga o que o bot lembra "
              "de você. `/optin` desfaz o opt-out.",
        "ja": "聞かれたくない場合は `/optout` を使ってください。それ以降あなたの声は無視されます。`/forget` で"
              "ボットが覚えているあなたの情報を消去でき、`/optin` でオプトアウトを取り消せます。",
    },
    "consent.local_stt": {
        "en": "a local recognizer on the bot's own server", "de": "eine lokale Spracherkennung auf dem Server des Bots",
        "fr": "un moteur de reconnaissance local sur le serveur du bot", "es": "un reconocedor local en el propio servidor del bot",
        "pt": "um reconhecedor local no próprio servidor do bot", "ja": "ボット自身のサーバー上のローカル音声認識",
    },
    "consent.local_stt_multi": {
        "en": "a local multilingual recognizer on the bot's own server",
        "de": "eine lokale mehrsprachige Spracherkennung auf dem Server des Bots",
        "fr": "un moteur de reconnaissance multilingue local sur le serveur du bot",
        "es": "un reconocedor multilingüe local en el propio servidor del bot",
        "pt": "um reconhecedor multilíngue local no próprio servidor do bot",
        "ja": "ボット自身のサーバー上の多言語ローカル音声認識",
    },
    "consent.local_tts": {
        "en": "a local voice on the bot's own server", "de": "eine lokale Stimme auf dem Server des Bots",
        "fr": "une voix locale sur le serveur du bot", "es": "una voz local en el propio servidor del bot",
        "pt": "uma voz local no próprio servidor do bot", "ja": "ボット自身のサーバー上のローカル音声",
    },
    "consent.builtin_llm": {
        "en": "a built-in script on the bot's own server", "de": "ein eingebautes Skript auf dem Server des Bots",
        "fr": "un script intégré sur le serveur du bot", "es": "un guion integrado en el propio servidor del bot",
        "pt": "um roteiro embutido no próprio servidor do bot", "ja": "ボット自身のサーバー上の内蔵スクリプト",
    },
    "consent.llm_at": {
        "en": "the language model at {host}", "de": "das Sprachmodell bei {host}", "fr": "le modèle de langage sur {host}",
        "es": "el modelo de lenguaje en {host}", "pt": "o modelo de linguagem em {host}", "ja": "{host} の言語モデル",
    },
    "consent.elizaos_at": {
        "en": "the ElizaOS agent at {host}", "de": "der ElizaOS-Agent bei {host}", "fr": "l'agent ElizaOS sur {host}",
        "es": "el agente ElizaOS en {host}", "pt": "o agente ElizaOS em {host}", "ja": "{host} の ElizaOS エージェント",
    },
    # -- when the bot answers (mode) ---------------------------------------------------------
    "mode.set": {
        "en": "Mode set to **{mode}**.", "de": "Modus auf **{mode}** gestellt.", "fr": "Mode réglé sur **{mode}**.",
        "es": "Modo cambiado a **{mode}**.", "pt": "Modo definido como **{mode}**.", "ja": "モードを **{mode}** にしました。",
    },
    "mode.listen_hint": {
        "en": "Use `/listen` (or the button on my notice after the next `/join`) to talk to me.",
        "de": "Mit `/listen` (oder dem Knopf in meinem Hinweis nach dem nächsten `/join`) sprichst du mit mir.",
        "fr": "Utilise `/listen` (ou le bouton de mon message après le prochain `/join`) pour me parler.",
        "es": "Usa `/listen` (o el botón de mi aviso tras el próximo `/join`) para hablar conmigo.",
        "pt": "Use `/listen` (ou o botão do meu aviso depois do próximo `/join`) para falar comigo.",
        "ja": "話しかけるには `/listen`（または次の `/join` 後の案内にあるボタン）を使ってください。",
    },
    "mode.always": {
        "en": "{bot} answers everything said in the channel.",
        "de": "{bot} antwortet auf alles, was im Kanal gesagt wird.",
        "fr": "{bot} répond à tout ce qui est dit dans le salon.",
        "es": "{bot} responde a todo lo que se dice en el canal.",
        "pt": "{bot} responde a tudo o que é dito no canal.",
        "ja": "{bot} はチャンネルで話されたすべてに返事をします。",
    },
    "mode.push_to_talk": {
        "en": "{bot} answers only people who press **Talk to {bot}** (or use `/listen`) first.",
        "de": "{bot} antwortet nur, wenn man vorher **Talk to {bot}** drückt (oder `/listen` nutzt).",
        "fr": "{bot} ne répond qu'aux personnes qui appuient d'abord sur **Talk to {bot}** (ou utilisent `/listen`).",
        "es": "{bot} solo responde a quien pulse antes **Talk to {bot}** (o use `/listen`).",
        "pt": "{bot} só responde a quem apertar **Talk to {bot}** antes (ou usar `/listen`).",
        "ja": "{bot} は先に **Talk to {bot}** を押した人（または `/listen` を使った人）にだけ返事をします。",
    },
    "mode.addressed": {
        "en": "{bot} answers when someone says its name.",
        "de": "{bot} antwortet, wenn jemand seinen Namen sagt.",
        "fr": "{bot} répond quand quelqu'un dit son nom.",
        "es": "{bot} responde cuando alguien dice su nombre.",
        "pt": "{bot} responde quando alguém diz o nome dele.",
        "ja": "{bot} は名前を呼ばれたときに返事をします。",
    },
    "mode.scribe": {
        "en": "{bot} is only taking notes: it answers nobody, keeps a transcript of who said what (`/transcript`), "
              "and posts a summary when it leaves.",
        "de": "{bot} schreibt nur mit: Er antwortet niemandem, hält fest, wer was gesagt hat (`/transcript`), "
              "und postet beim Gehen eine Zusammenfassung.",
        "fr": "{bot} prend seulement des notes : il ne répond à personne, garde une transcription de qui a dit quoi "
              "(`/transcript`) et publie un résumé en partant.",
        "es": "{bot} solo toma notas: no responde a nadie, guarda quién dijo qué (`/transcript`) y publica un resumen al salir.",
        "pt": "{bot} só está anotando: não responde a ninguém, guarda quem disse o quê (`/transcript`) e publica um "
              "resumo ao sair.",
        "ja": "{bot} は記録だけをしています。誰にも返事をせず、誰が何を話したかを記録し（`/transcript`）、"
              "退出時に要約を投稿します。",
    },
    "mode.auto": {
        "en": "{bot} answers when someone says its name, or anything you say when you're alone with it.",
        "de": "{bot} antwortet, wenn jemand seinen Namen sagt, oder auf alles, wenn du allein mit ihm bist.",
        "fr": "{bot} répond quand quelqu'un dit son nom, ou à tout ce que tu dis quand tu es seul avec lui.",
        "es": "{bot} responde cuando alguien dice su nombre, o a todo lo que digas cuando estés a solas con él.",
        "pt": "{bot} responde quando alguém diz o nome dele, ou a tudo o que você disser quando estiver sozinho com ele.",
        "ja": "{bot} は名前を呼ばれたとき、または二人きりのときは何にでも返事をします。",
    },
    # -- SMS ---------------------------------------------------------------------------------
    "sms.help": {
        "en": "You're texting {name}, an AI character. Just text to chat. To link Discord, run /link phone there and "
              "text the code here. Reply STOP to opt out, START to opt back in.",
        "de": "Du schreibst mit {name}, einer KI-Figur. Schreib einfach drauflos. Um Discord zu verknüpfen, nutze dort "
              "/link phone und schick den Code hierher. Antworte STOPP zum Abmelden, START zum erneuten Anmelden.",
        "fr": "Tu écris à {name}, un personnage IA. Écris simplement pour discuter. Pour lier Discord, lance /link phone "
              "là-bas et envoie le code ici. Réponds ARRET pour te désinscrire, START pour te réinscrire.",
        "es": "Estás escribiendo a {name}, un personaje de IA. Escribe y charlamos. Para vincular Discord, usa allí "
              "/link phone y envía el código aquí. Responde BAJA para darte de baja y START para volver.",
        "pt": "Você está conversando com {name}, um personagem de IA. É só mandar mensagem. Para vincular o Discord, use "
              "/link phone lá e mande o código aqui. Responda PARAR para sair e START para voltar.",
        "ja": "AIキャラクターの{name}とやりとりしています。気軽にメッセージを送ってください。Discordと連携するには、"
              "Discordで /link phone を実行し、表示されたコードをここに送ってください。配信停止は「停止」、再開は START と返信してください。",
    },
    "sms.stopped": {
        "en": "You're unsubscribed and won't get more messages from me. Reply START to opt back in.",
        "de": "Du bist abgemeldet und bekommst keine Nachrichten mehr von mir. Antworte START, um dich wieder anzumelden.",
        "fr": "Tu es désinscrit et tu ne recevras plus de messages de ma part. Réponds START pour te réinscrire.",
        "es": "Te has dado de baja y no recibirás más mensajes míos. Responde START para volver a suscribirte.",
        "pt": "Você saiu e não vai receber mais mensagens minhas. Responda START para voltar.",
        "ja": "配信を停止しました。今後メッセージは届きません。再開するには START と返信してください。",
    },
    "sms.start": {
        "en": "Welcome back! You're subscribed again. Text me anytime; reply STOP to opt out.",
        "de": "Willkommen zurück! Du bist wieder angemeldet. Schreib mir jederzeit; mit STOPP meldest du dich ab.",
        "fr": "Bon retour ! Tu es de nouveau inscrit. Écris-moi quand tu veux ; réponds ARRET pour te désinscrire.",
        "es": "¡Bienvenido de nuevo! Vuelves a estar suscrito. Escríbeme cuando quieras; responde BAJA para darte de baja.",
        "pt": "Que bom te ver de volta! Você está inscrito de novo. Mande mensagem quando quiser; responda PARAR para sair.",
        "ja": "おかえりなさい！配信を再開しました。いつでもメッセージをどうぞ。停止するには「停止」と返信してください。",
    },
    "sms.rate": {
        "en": "You're texting faster than I can keep up. I'll read everything, but I'll answer again in a few minutes.",
        "de": "Du schreibst schneller, als ich mitkomme. Ich lese alles, antworte aber erst in ein paar Minuten wieder.",
        "fr": "Tu écris plus vite que je ne peux suivre. Je lis tout, mais je ne répondrai que dans quelques minutes.",
        "es": "Escribes más rápido de lo que puedo seguir. Lo leo todo, pero volveré a responder en unos minutos.",
        "pt": "Você está escrevendo mais rápido do que consigo acompanhar. Vou ler tudo, mas só respondo de novo em alguns minutos.",
        "ja": "送信のペースが速すぎて追いつけません。すべて読みますが、返事は数分後になります。",
    },
    "sms.link_bad": {
        "en": "That link code didn't work or has expired. Run /link phone in Discord to get a new one.",
        "de": "Dieser Verknüpfungscode hat nicht funktioniert oder ist abgelaufen. Hol dir mit /link phone in Discord einen neuen.",
        "fr": "Ce code de liaison ne marche pas ou a expiré. Lance /link phone dans Discord pour en obtenir un nouveau.",
        "es": "Ese código de vinculación no funcionó o ha caducado. Usa /link phone en Discord para conseguir otro.",
        "pt": "Esse código de vinculação não funcionou ou expirou. Use /link phone no Discord para gerar outro.",
        "ja": "その連携コードは使えないか、期限が切れています。Discordで /link phone を実行して新しいコードを取得してください。",
    },
    "sms.oops": {
        "en": "Sorry, something went wrong on my side. Please try again in a bit.",
        "de": "Entschuldige, bei mir ist etwas schiefgelaufen. Versuch es bitte gleich noch einmal.",
        "fr": "Désolé, quelque chose s'est mal passé de mon côté. Réessaie dans un instant.",
        "es": "Perdona, algo falló por mi parte. Inténtalo de nuevo en un rato.",
        "pt": "Desculpe, algo deu errado do meu lado. Tente de novo daqui a pouco.",
        "ja": "すみません、こちらで問題が起きました。少ししてからもう一度お試しください。",
    },
    # -- text chat ---------------------------------------------------------------------------
    "chat.slow_down": {
        "en": "You're writing faster than I can think! Give me about {seconds} seconds and try again.",
        "de": "Du schreibst schneller, als ich denken kann! Gib mir etwa {seconds} Sekunden und versuch es dann noch mal.",
        "fr": "Tu écris plus vite que je ne réfléchis ! Laisse-moi environ {seconds} secondes et réessaie.",
        "es": "¡Escribes más rápido de lo que pienso! Dame unos {seconds} segundos y vuelve a intentarlo.",
        "pt": "Você escreve mais rápido do que eu penso! Me dê uns {seconds} segundos e tente de novo.",
        "ja": "考えるより速く書き込まれています！{seconds}秒ほど待ってから、もう一度お試しください。",
    },
    "chat.lost_for_words": {
        "en": "I'm lost for words. Could you put that another way?",
        "de": "Mir fehlen die Worte. Kannst du das anders sagen?",
        "fr": "Je reste sans voix. Tu peux le dire autrement ?",
        "es": "Me he quedado sin palabras. ¿Puedes decirlo de otra forma?",
        "pt": "Fiquei sem palavras. Pode dizer de outro jeito?",
        "ja": "言葉が見つかりません。別の言い方をしていただけますか？",
    },
    # -- agent failures said to the person ----------------------------------------------------
    "agent.blank": {
        "en": "Sorry, I drew a blank there. Could you say that again?",
        "de": "Entschuldige, da fiel mir gerade nichts ein. Kannst du das noch mal sagen?",
        "fr": "Désolé, j'ai eu un trou. Tu peux répéter ?",
        "es": "Perdona, me quedé en blanco. ¿Puedes repetirlo?",
        "pt": "Desculpe, me deu um branco. Pode repetir?",
        "ja": "すみません、言葉が出てきませんでした。もう一度言っていただけますか？",
    },
    "agent.unreachable": {
        "en": "Sorry, I can't reach my language model right now. Try again in a moment?",
        "de": "Entschuldige, ich erreiche mein Sprachmodell gerade nicht. Versuch es gleich noch einmal?",
        "fr": "Désolé, je n'arrive pas à joindre mon modèle de langage pour le moment. Tu réessaies dans un instant ?",
        "es": "Perdona, ahora mismo no puedo conectar con mi modelo de lenguaje. ¿Lo intentas en un momento?",
        "pt": "Desculpe, não consigo acessar meu modelo de linguagem agora. Tenta de novo daqui a pouco?",
        "ja": "すみません、今は言語モデルに接続できません。少ししてからもう一度お試しください。",
    },
    # -- phone calls (bot/phone): what a call says in its own words -----------------------------
    # Said to callers, who may be strangers: the polite forms (Sie, vous, usted, です/ます); Brazilian
    # Portuguese "você" is the polite everyday form on the phone too.
    "phone.greeting": {
        "en": "Hi, this is {name}.",
        "de": "Hallo, hier spricht {name}.",
        "fr": "Bonjour, ici {name}.",
        "es": "Hola, le habla {name}.",
        "pt": "Olá, aqui é {name}.",
        "ja": "お電話ありがとうございます。{name}です。",
    },
    "phone.notice.ai": {
        "en": "Just so you know, this call is answered by an AI agent.",
        "de": "Zu Ihrer Information: Dieser Anruf wird von einem KI-Agenten beantwortet.",
        "fr": "Pour information, cet appel est pris en charge par un agent d'intelligence artificielle.",
        "es": "Para su información, esta llamada la atiende un agente de inteligencia artificial.",
        "pt": "Para sua informação, esta ligação é atendida por um agente de inteligência artificial.",
        "ja": "ご案内いたします。この通話にはAIエージェントが応答しています。",
    },
    "phone.notice.deepgram": {
        "en": "Deepgram transcribes what you say.",
        "de": "Deepgram schreibt mit, was Sie sagen.",
        "fr": "Deepgram transcrit ce que vous dites.",
        "es": "Deepgram transcribe lo que usted dice.",
        "pt": "A Deepgram transcreve o que você diz.",
        "ja": "お話しの内容はDeepgramが文字に起こします。",
    },
    "phone.notice.openai": {
        "en": "OpenAI writes the replies.",
        "de": "Die Antworten schreibt OpenAI.",
        "fr": "Les réponses sont rédigées par OpenAI.",
        "es": "Las respuestas las redacta OpenAI.",
        "pt": "As respostas são escritas pela OpenAI.",
        "ja": "返答はOpenAIが作成します。",
    },
    "phone.notice.llm": {
        "en": "A language model service writes the replies.",
        "de": "Die Antworten schreibt ein Sprachmodell-Dienst.",
        "fr": "Les réponses sont rédigées par un service de modèle de langage.",
        "es": "Las respuestas las redacta un servicio de modelos de lenguaje.",
        "pt": "As respostas são escritas por um serviço de modelo de linguagem.",
        "ja": "返答は言語モデルのサービスが作成します。",
    },
    "phone.notice.elizaos": {
        "en": "An ElizaOS agent writes the replies.",
        "de": "Die Antworten schreibt ein ElizaOS-Agent.",
        "fr": "Les réponses sont rédigées par un agent ElizaOS.",
        "es": "Las respuestas las redacta un agente de ElizaOS.",
        "pt": "As respostas são escritas por um agente ElizaOS.",
        "ja": "返答はElizaOSのエージェントが作成します。",
    },
    "phone.notice.elevenlabs": {
        "en": "ElevenLabs speaks the replies.",
        "de": "Die Stimme der Antworten kommt von ElevenLabs.",
        "fr": "Les réponses sont lues par ElevenLabs.",
        "es": "Las respuestas las pronuncia ElevenLabs.",
        "pt": "As respostas são faladas pela ElevenLabs.",
        "ja": "返答の音声はElevenLabsが読み上げます。",
    },
    "phone.notice.local": {
        "en": "Your voice stays on this server.",
        "de": "Ihre Stimme verlässt diesen Server nicht.",
        "fr": "Votre voix reste sur ce serveur.",
        "es": "Su voz no sale de este servidor.",
        "pt": "Sua voz não sai deste servidor.",
        "ja": "お客様の音声はこのサーバーの外には送られません。",
    },
    "phone.time_limit": {
        "en": "We've reached the time limit for this call. Thanks for calling, goodbye!",
        "de": "Die maximale Gesprächsdauer ist erreicht. Vielen Dank für Ihren Anruf, auf Wiederhören!",
        "fr": "Nous avons atteint la durée maximale de cet appel. Merci de votre appel, au revoir !",
        "es": "Hemos llegado al tiempo máximo de esta llamada. Gracias por llamar, ¡hasta luego!",
        "pt": "Chegamos ao tempo máximo desta ligação. Obrigado por ligar, até logo!",
        "ja": "通話時間の上限に達しました。お電話ありがとうございました。失礼いたします。",
    },
    "phone.hearing_failed": {
        "en": "Sorry, I can't hear you right now. Please call again later. Goodbye.",
        "de": "Entschuldigung, ich kann Sie gerade nicht hören. Bitte rufen Sie später noch einmal an. Auf Wiederhören.",
        "fr": "Désolé, je ne vous entends pas pour le moment. Merci de rappeler plus tard. Au revoir.",
        "es": "Lo siento, ahora mismo no puedo oírle. Por favor, vuelva a llamar más tarde. Adiós.",
        "pt": "Desculpe, não consigo ouvir você agora. Por favor, ligue de novo mais tarde. Até logo.",
        "ja": "申し訳ありません。ただいまお声を聞き取ることができません。後ほどおかけ直しください。失礼いたします。",
    },
    "phone.restarting": {
        "en": "Sorry, I'm restarting. Please call again in a minute.",
        "de": "Entschuldigung, ich starte gerade neu. Bitte rufen Sie in einer Minute noch einmal an.",
        "fr": "Désolé, je redémarre. Merci de rappeler dans une minute.",
        "es": "Lo siento, me estoy reiniciando. Por favor, vuelva a llamar en un minuto.",
        "pt": "Desculpe, estou reiniciando. Por favor, ligue de novo daqui a um minuto.",
        "ja": "申し訳ありません。ただいま再起動中です。1分ほどしてからおかけ直しください。",
    },
    "phone.no_ears": {
        "en": "Sorry, I can't take calls right now. Please send a text message instead. Goodbye.",
        "de": "Entschuldigung, ich kann gerade keine Anrufe annehmen. Bitte schicken Sie mir stattdessen eine SMS. Auf Wiederhören.",
        "fr": "Désolé, je ne peux pas prendre d'appels pour le moment. Merci de m'envoyer plutôt un SMS. Au revoir.",
        "es": "Lo siento, ahora mismo no puedo atender llamadas. Por favor, envíeme un mensaje de texto. Adiós.",
        "pt": "Desculpe, não posso atender ligações agora. Por favor, me mande uma mensagem de texto. Até logo.",
        "ja": "申し訳ありません。ただいまお電話をお受けできません。代わりにSMSをお送りください。失礼いたします。",
    },
    "phone.not_allowed": {
        "en": "Sorry, this number doesn't take calls from your phone. Goodbye.",
        "de": "Entschuldigung, dieser Anschluss nimmt keine Anrufe von Ihrer Nummer an. Auf Wiederhören.",
        "fr": "Désolé, ce numéro n'accepte pas les appels de votre téléphone. Au revoir.",
        "es": "Lo siento, este número no acepta llamadas de su teléfono. Adiós.",
        "pt": "Desculpe, este número não aceita ligações do seu telefone. Até logo.",
        "ja": "申し訳ありません。この番号ではお客様の電話番号からのお電話をお受けしておりません。失礼いたします。",
    },
}
