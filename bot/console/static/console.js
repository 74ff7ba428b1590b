// The voicebot console: live state over server-sent events, two hand-drawn charts, and the voice
// playground (microphone → 16 kHz PCM over a WebSocket → the bot; reply PCM back → Web Audio).
// No build step and nothing from elsewhere: this file, console.css and pcm-worklet.js are all.
"use strict";

const STAGES = [
  ["end_of_turn", "end of turn", "#8b98a5"],
  ["stt_final", "final transcript", "#4cc2ff"],
  ["agent_first_text", "agent's first text", "#d2a8ff"],
  ["tts_first_audio", "first speech audio", "#ffa657"],
  ["first_packet", "first packet out", "#3fb950"],
];
const RECEIVE = [["delivered", "#3fb950"], ["lost", "#f85149"], ["rejected", "#8b98a5"]];

// Tests read this; people can too, from the devtools console.
const voicebot = window.voicebot = {
  state: null,
  updates: 0,
  playground: {
    connected: false, transcripts: [], replies: [], turns: [], replyAudioSeconds: 0, sentSeconds: 0, errors: [],
    language: null,
  },
};

const $ = (id) => document.getElementById(id);

function text(id, value) {
  const el = $(id);
  if (el) el.textContent = value;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = c;
    tr.appendChild(td);
  }
  return tr;
}

// ------------------------------------------------------------------------------------ live state

function connectEvents() {
  const source = new EventSource("/console/events");
  source.addEventListener("state", (ev) => {
    const state = JSON.parse(ev.data);
    voicebot.state = state;
    voicebot.updates += 1;
    render(state);
  });
  source.onopen = () => { $("live").className = "dot on"; $("live").textContent = "live"; };
  source.onerror = () => { $("live").className = "dot off"; $("live").textContent = "reconnecting"; };
}

function render(state) {
  text("bot-name", state.bot);
  document.title = `${state.bot} · voicebot console`;
  text("engine-agent", state.engines.agent);
  text("engine-stt", state.engines.stt);
  text("engine-tts", state.engines.tts);
  const providers = $("providers").tBodies[0];
  providers.replaceChildren(...Object.entries(state.providers).map(([name, p]) => row([
    name, String(p.requests), String(p.errors),
    p.last_error ? `${new Date(p.last_error.at * 1000).toLocaleTimeString()} ${p.last_error.message}` : "–",
  ])));
  text("discord-state", state.discord ? `${state.guilds.length} voice channel(s) joined`
    : "Discord is not connected (no DISCORD_TOKEN): the playground below still works.");
  $("guilds").tBodies[0].replaceChildren(...state.guilds.map((g) => row([
    g.guild, g.channel + (g.connected ? "" : " (reconnecting)"), String(g.present),
    g.speaking_names ? `${g.speaking} (${g.speaking_names.join(", ")})` : String(g.speaking),
  ])));
  renderCluster(state.cluster);
  text("sms-waiting", String(state.sms.waiting));
  text("sms-failed", String(state.sms.failed));
  text("playground-count", String(state.playground));
  renderUsage(state.usage);
  drawTurns(state.turns);
  drawReceive(state.receive);
  const list = $("turn-list");
  list.replaceChildren(...state.turns.slice(-8).reverse().map((t) => {
    const li = document.createElement("li");
    const wait = t.wait_ms == null ? "no audio" : `${Math.round(t.wait_ms)} ms`;
    li.textContent = `${new Date(t.at * 1000).toLocaleTimeString()} ${t.channel} ${t.outcome} — ${wait}` +
      (t.text ? ` — “${t.text}” → “${t.reply}”` : "");
    return li;
  }));
}

function renderUsage(usage) {
  if (!usage) {
    text("usage-note", "Usage is not metered here.");
    return;
  }
  const kinds = ["speech", "voice", "model", "phone"];
  $("usage-days").tBodies[0].replaceChildren(...usage.days.map((d) => row([
    d.day, ...kinds.map((k) => d.shown[k] || "–"),
    d.spend == null ? (usage.prices ? "$0" : "no PRICES") : `$${d.spend.toFixed(4)}`,
  ])));
  const refused = Object.entries(usage.refusals || {}).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`);
  text("usage-note", (usage.limited ? "Daily limits are on" : "No daily limits (LIMITS_* unset)") +
    (refused.length ? `; paid requests refused since start: ${refused.join(", ")}` : "") +
    ". Below: every engine's use, local ones included (never limited).");
  $("usage-engines").tBodies[0].replaceChildren(...usage.engines.slice().reverse().map((e) => row([
    e.day, e.kind, e.engine, e.shown, String(e.requests),
  ])));
}

function renderCluster(cluster) {
  const up = cluster.processes.filter((p) => p.state === "up").length;
  text("cluster-state", cluster.processes.length === 0 ? "No process has registered yet."
    : `${up} up, ${cluster.down} down` + (cluster.stale ? " — the database cannot be read: these rows are the last known" : ""));
  $("cluster-processes").tBodies[0].replaceChildren(...cluster.processes.map((p) => {
    const tr = row([
      p.name + (p.this ? " (this one)" : ""), p.host, String(p.pid),
      p.shard_count ? `${p.shards} of ${p.shard_count}` : "–", String(p.guilds), String(p.voice),
      `${p.beat_age} s ago`, p.state, p.version,
    ]);
    tr.className = `state-${p.state}`;
    return tr;
  }));
}

function canvasContext(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.height / (canvas.dataset.ratio || 1);
  if (!canvas.dataset.ratio || Number(canvas.dataset.ratio) !== ratio) {
    canvas.dataset.ratio = String(ratio);
    canvas.width = width * ratio;
    canvas.height = height * ratio;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return [ctx, width, height];
}

function drawLegend() {
  const legend = $("legend");
  if (legend.childElementCount) return;
  for (const [, label, color] of STAGES) {
    const span = document.createElement("span");
    span.style.setProperty("--c", color);
    span.textContent = label;
    legend.appendChild(span);
  }
}

function drawTurns(turns) {
  drawLegend();
  const canvas = $("turns-chart");
  const timed = turns.filter((t) => Object.keys(t.stages_ms).length > 0);
  canvas.dataset.turns = String(timed.length);
  const [ctx, width, height] = canvasContext(canvas);
  const left = 48, bottom = 20, top = 10;
  const plotH = height - bottom - top;
  const totals = timed.map((t) => STAGES.reduce((sum, [k]) => sum + (t.stages_ms[k] || 0), 0));
  const max = Math.max(500, ...totals) * 1.1;
  ctx.strokeStyle = "#2a3642";
  ctx.fillStyle = "#8b98a5";
  ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = "right";
  const step = niceStep(max / 4);
  for (let v = 0; v <= max; v += step) {
    const y = top + plotH - (v / max) * plotH;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(width, y); ctx.stroke();
    ctx.fillText(v >= 1000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`, left - 4, y + 4);
  }
  if (!timed.length) {
    ctx.textAlign = "left";
    ctx.fillText("No turns yet: talk in a voice channel or in the playground below.", left + 10, top + plotH / 2);
    return;
  }
  const slot = Math.min(40, (width - left - 10) / timed.length);
  timed.forEach((t, i) => {
    const x = left + 6 + i * slot;
    let y = top + plotH;
    for (const [k, , color] of STAGES) {
      const h = ((t.stages_ms[k] || 0) / max) * plotH;
      ctx.fillStyle = color;
      ctx.fillRect(x, y - h, slot * 0.7, h);
      y -= h;
    }
    if (t.outcome === "interrupted") {
      ctx.fillStyle = "#f85149";
      ctx.fillRect(x, top + plotH + 3, slot * 0.7, 3);
    }
  });
}

function niceStep(raw) {
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function drawReceive(samples) {
  const canvas = $("receive-chart");
  const [ctx, width, height] = canvasContext(canvas);
  const left = 48, bottom = 6, top = 8;
  const plotH = height - bottom - top;
  // Per-second rates from cumulative counters.
  const rates = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = Math.max(0.001, samples[i].t - samples[i - 1].t);
    const r = {};
    for (const [k] of RECEIVE) r[k] = Math.max(0, (samples[i][k] - samples[i - 1][k]) / dt);
    rates.push(r);
  }
  const max = Math.max(10, ...rates.flatMap((r) => RECEIVE.map(([k]) => r[k]))) * 1.1;
  ctx.fillStyle = "#8b98a5";
  ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = "right";
  ctx.fillText(`${Math.round(max)}/s`, left - 4, top + 10);
  ctx.fillText("0", left - 4, top + plotH);
  const dx = (width - left - 4) / Math.max(1, 119);
  for (const [k, color] of RECEIVE) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    rates.forEach((r, i) => {
      const x = left + (119 - (rates.length - 1) + i) * dx;
      const y = top + plotH - (r[k] / max) * plotH;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

// ------------------------------------------------------------------------------------ playground

const pg = {
  ws: null, mic: null, micCtx: null, node: null, talking: false,
  out: null, nextAt: 0, rate: 24000, sources: [],
};

function log(kind, message) {
  const p = document.createElement("p");
  p.className = kind;
  p.textContent = message;
  const box = $("pg-log");
  box.appendChild(p);
  box.scrollTop = box.scrollHeight;
}

function setConnected(on) {
  voicebot.playground.connected = on;
  $("pg-connect").textContent = on ? "Disconnect" : "Connect";
  for (const id of ["pg-talk", "pg-text", "pg-send", "pg-language"]) $(id).disabled = !on;
  text("pg-status", on ? "connected" : "not connected");
}

async function connectPlayground() {
  if (pg.ws) { pg.ws.close(); return; }
  // Output first: created inside the click, so the browser lets it play.
  pg.out = pg.out || new AudioContext();
  await pg.out.resume();
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/playground/ws`);
  ws.binaryType = "arraybuffer";
  pg.ws = ws;
  text("pg-status", "connecting…");
  ws.onopen = () => setConnected(true);
  ws.onclose = (ev) => {
    pg.ws = null;
    stopTalking(false);
    setConnected(false);
    if (ev.code !== 1000 && ev.code !== 1005) text("pg-status", `closed (${ev.code}${ev.reason ? ": " + ev.reason : ""})`);
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") { playPcm(ev.data); return; }
    const msg = JSON.parse(ev.data);
    switch (msg.type) {
      case "hello":
        log("note", `Connected to ${msg.bot} (speech-to-text: ${msg.stt || "none"}, voice: ${msg.tts}).`);
        fillLanguages(msg.languages || [], msg.language);
        break;
      case "language":
        showLanguage(msg);
        log("note", `Language: ${msg.name}${msg.setting ? "" : " (LANGUAGE)"}.`);
        break;
      case "transcript":
        voicebot.playground.transcripts.push(msg.text);
        log("you", `you: ${msg.text}`);
        break;
      case "reply_start":
        pg.rate = msg.sample_rate;
        break;
      case "stop":
        for (const s of pg.sources) { try { s.stop(); } catch (e) { /* already ended */ } }
        pg.sources = [];
        pg.nextAt = 0;
        break;
      case "turn": {
        voicebot.playground.turns.push(msg);
        if (msg.reply) { voicebot.playground.replies.push(msg.reply); log("bot", `bot: ${msg.reply}`); }
        const parts = STAGES.filter(([k]) => k in (msg.stages_ms || {}))
          .map(([k, label]) => `${label} ${Math.round(msg.stages_ms[k])} ms`);
        log("note", `${msg.outcome}${msg.wait_ms != null ? `, waited ${Math.round(msg.wait_ms)} ms` : ""}` +
          (parts.length ? ` (${parts.join(", ")})` : ""));
        break;
      }
      case "note": log("note", msg.message); break;
      case "released": stopTalking(false); log("note", msg.message); break;
      case "error": voicebot.playground.errors.push(msg.message); log("error", msg.message); break;
      default: break;
    }
  };
}

function fillLanguages(languages, current) {
  const select = $("pg-language");
  // Keep the two fixed choices (default, auto); add each language once.
  while (select.options.length > 2) select.remove(2);
  for (const lang of languages) {
    const option = document.createElement("option");
    option.value = lang.code;
    option.textContent = lang.name;
    select.appendChild(option);
  }
  if (current) showLanguage(current);
}

function showLanguage(state) {
  voicebot.playground.language = state;
  $("pg-language").value = state.setting || "default";
}

function playPcm(buffer) {
  const samples = new Int16Array(buffer);
  if (!samples.length || !pg.out) return;
  const audio = pg.out.createBuffer(1, samples.length, pg.rate);
  const channel = audio.getChannelData(0);
  for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
  const src = pg.out.createBufferSource();
  src.buffer = audio;
  src.connect(pg.out.destination);
  const at = Math.max(pg.out.currentTime + 0.02, pg.nextAt);
  src.start(at);
  pg.nextAt = at + audio.duration;
  pg.sources.push(src);
  src.onended = () => { pg.sources = pg.sources.filter((s) => s !== src); };
  voicebot.playground.replyAudioSeconds += audio.duration;
  text("pg-audio", `reply audio: ${voicebot.playground.replyAudioSeconds.toFixed(1)} s`);
}

async function ensureMic() {
  if (pg.node) return;
  pg.mic = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  pg.micCtx = new AudioContext({ sampleRate: 16000 });
  await pg.micCtx.audioWorklet.addModule("/console/static/pcm-worklet.js");
  const source = pg.micCtx.createMediaStreamSource(pg.mic);
  pg.node = new AudioWorkletNode(pg.micCtx, "pcm-capture");
  pg.node.port.onmessage = (ev) => {
    if (pg.talking && pg.ws && pg.ws.readyState === WebSocket.OPEN) {
      pg.ws.send(ev.data);
      voicebot.playground.sentSeconds += ev.data.byteLength / 32000;
    }
  };
  source.connect(pg.node);
}

async function startTalking() {
  try {
    await ensureMic();
  } catch (err) {
    log("error", `No microphone: ${err.message || err}. You can still type.`);
    return;
  }
  await pg.micCtx.resume();
  pg.talking = true;
  pg.ws.send(JSON.stringify({ type: "start" }));
  const talk = $("pg-talk");
  talk.setAttribute("aria-pressed", "true");
  talk.textContent = "Stop and send";
}

function stopTalking(send = true) {
  if (!pg.talking) return;
  pg.talking = false;
  if (send && pg.ws && pg.ws.readyState === WebSocket.OPEN) pg.ws.send(JSON.stringify({ type: "end" }));
  const talk = $("pg-talk");
  talk.setAttribute("aria-pressed", "false");
  talk.textContent = "Press to talk";
}

function setupPlayground() {
  $("pg-connect").addEventListener("click", () => { connectPlayground(); });
  $("pg-talk").addEventListener("click", () => { if (pg.talking) stopTalking(); else startTalking(); });
  $("pg-language").addEventListener("change", (ev) => {
    if (pg.ws && pg.ws.readyState === WebSocket.OPEN) {
      pg.ws.send(JSON.stringify({ type: "language", language: ev.target.value }));
    }
  });
  $("pg-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("pg-text");
    const value = input.value.trim();
    if (!value || !pg.ws) return;
    pg.ws.send(JSON.stringify({ type: "text", text: value }));
    input.value = "";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  connectEvents();
  setupPlayground();
});
