// The web chat page of `apus app-ui` / `apus deploy --ui`: a client of the same server's OpenAI
// API (GET /v1/models, POST /v1/chat/completions with stream: true). No framework, no build step.
// URLs are relative, so that the page also works behind a proxy that serves it under a path.
import { renderMarkdown } from './markdown.js';

const $ = (id) => document.getElementById(id);
const els = {
  model: $('model'), modelNote: $('model-note'), log: $('log'), empty: $('empty'), form: $('composer'),
  input: $('input'), send: $('send'), stop: $('stop'), clear: $('clear'), settings: $('settings'),
  settingsToggle: $('settings-toggle'), system: $('system'), apiKey: $('api_key'), reset: $('reset-settings'),
};
// Generation settings: input id -> parse (empty means the server's default and is not sent).
const NUMBERS = { temperature: Number, top_p: Number, max_tokens: (v) => parseInt(v, 10), seed: (v) => parseInt(v, 10) };
const STORE = 'apus.chat.settings';

const history = [];   // the conversation: {role, content}
let current = null;   // the answer being generated: {controller, ...}
let conversation = 0; // bumped by Clear: an answer still ending then belongs to no conversation
let models = [];

// ---- settings --------------------------------------------------------------------------------

function loadSettings() {
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(STORE) || '{}'); } catch { /* start fresh */ }
  for (const id of Object.keys(NUMBERS)) $(id).value = saved[id] ?? '';
  els.system.value = saved.system ?? '';
  els.apiKey.value = saved.api_key ?? '';
  return saved;
}

function saveSettings() {
  const s = { system: els.system.value, api_key: els.apiKey.value, model: els.model.value };
  for (const id of Object.keys(NUMBERS)) s[id] = $(id).value;
  localStorage.setItem(STORE, JSON.stringify(s));
}

// The request's sampling fields; throws with a message naming the field when one is invalid.
function samplingParams() {
  const out = {};
  for (const [id, parse] of Object.entries(NUMBERS)) {
    const el = $(id);
    if (el.value.trim() === '') continue;
    const v = parse(el.value);
    if (!Number.isFinite(v) || !el.checkValidity()) {
      el.focus();
      throw new Error(`${el.labels[0].textContent}: "${el.value}" is not a valid value`);
    }
    out[id] = v;
  }
  return out;
}

function headers() {
  const h = { 'Content-Type': 'application/json' };
  if (els.apiKey.value) h.Authorization = 'Bearer ' + els.apiKey.value;
  return h;
}

// ---- models ----------------------------------------------------------------------------------

// The error message of a failed API response (OpenAI's {"error": {"message"}}), else its status.
async function errorOf(res) {
  const body = await res.text();
  try {
    const msg = JSON.parse(body).error.message;
    if (msg) return `${msg} (HTTP ${res.status})`;
  } catch { /* not JSON */ }
  return `HTTP ${res.status} ${res.statusText}${body ? ': ' + body.slice(0, 300) : ''}`;
}

let modelsTimer = 0;
async function loadModels(wanted) {
  clearTimeout(modelsTimer);
  let res;
  try {
    res = await fetch('v1/models', { headers: headers() });
  } catch (e) {
    showNote(`Cannot reach the server: ${e.message}. Retrying…`, true);
    modelsTimer = setTimeout(() => loadModels(wanted), 2000);
    return;
  }
  if (res.status === 503) {  // `apus deploy` answers 503 until the model is loaded
    showNote('The model is loading…', false);
    modelsTimer = setTimeout(() => loadModels(wanted), 1000);
    return;
  }
  if (!res.ok) {
    const msg = await errorOf(res);
    if (res.status === 401) {
      openSettings(true);
      els.apiKey.focus();
      showNote(`${msg}. Enter the server's API key in Settings.`, true);
    } else {
      showNote(msg, true);
    }
    return;
  }
  models = (await res.json()).data || [];
  els.model.replaceChildren(...models.map((m) => new Option(m.id, m.id)));
  if (models.some((m) => m.id === wanted)) els.model.value = wanted;
  describeModel();
}

function describeModel() {
  const m = models.find((x) => x.id === els.model.value);
  showNote(m ? [m.description, m.max_model_len ? `context: ${m.max_model_len} tokens` : ''].filter(Boolean).join(' · ') : '', false);
}

function showNote(msg, isError) {
  els.modelNote.textContent = msg;
  els.modelNote.classList.toggle('error', isError);
  els.modelNote.setAttribute('role', isError ? 'alert' : 'status');
}

// ---- conversation ----------------------------------------------------------------------------

function addMessage(role, content) {
  const div = document.createElement('div');
  div.className = `msg ${role}`;
  const who = document.createElement('div');
  who.className = 'who';
  who.textContent = role === 'user' ? 'You' : role === 'assistant' ? els.model.value || 'Assistant' : 'Error';
  const body = document.createElement('div');
  body.className = 'body';
  div.append(who, body);
  els.log.appendChild(div);
  els.empty.hidden = true;
  const view = { div, body, meta: null };
  setContent(view, role, content);
  return view;
}

function setContent(view, role, content) {
  if (role === 'error') view.body.textContent = content;
  else view.body.replaceChildren(renderMarkdown(content, document));
}

function setMeta(view, textContent) {
  if (!view.meta) {
    view.meta = document.createElement('div');
    view.meta.className = 'meta';
    view.div.appendChild(view.meta);
  }
  view.meta.textContent = textContent;
}

// The log follows a growing answer unless the user scrolled up to read.
let followEnd = true;
els.log.addEventListener('scroll', () => {
  followEnd = els.log.scrollHeight - els.log.scrollTop - els.log.clientHeight < 40;
});
function scrollToEnd() {
  if (followEnd) els.log.scrollTop = els.log.scrollHeight;
}

function setBusy(busy) {
  els.send.hidden = busy;
  els.stop.hidden = !busy;
  els.log.setAttribute('aria-busy', String(busy));
}

// Splits a growing SSE text into complete events; returns [events' data, the incomplete rest].
function takeEvents(buffer) {
  const events = [];
  let at;
  buffer = buffer.replace(/\r\n/g, '\n');
  while ((at = buffer.indexOf('\n\n')) >= 0) {
    const data = buffer.slice(0, at).split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, ''));
    if (data.length) events.push(data.join('\n'));
    buffer = buffer.slice(at + 2);
  }
  return [events, buffer];
}

function stats(a) {
  const parts = [];
  const tokens = a.usage ? a.usage.completion_tokens : a.chunks;
  if (tokens) parts.push(`${a.usage ? '' : '≈'}${tokens} tokens`);
  // Decode speed: the tokens after the first over the time since the first arrived; when they all
  // came at once (a short answer from a fast server), all of them over the whole request.
  const span = (a.tLast - a.tFirst) / 1000;
  const speed = span >= 0.05 ? (tokens - 1) / span : tokens / ((a.tLast - a.tStart) / 1000);
  if (tokens > 1 && Number.isFinite(speed)) parts.push(`${speed.toFixed(1)} tokens/s`);
  if (a.tFirst) parts.push(`first token ${((a.tFirst - a.tStart) / 1000).toFixed(2)} s`);
  if (a.stopped) parts.push('stopped');
  else if (a.finish === 'length') parts.push('cut at max tokens');
  return parts.join(' · ');
}

async function send(textIn) {
  const content = textIn.trim();
  if (!content || current) return;
  let params;
  try {
    params = samplingParams();
  } catch (e) {
    openSettings(true);
    addMessage('error', e.message);
    return;
  }
  saveSettings();
  history.push({ role: 'user', content });
  const question = addMessage('user', content);
  followEnd = true;
  els.input.value = '';
  autoGrow();
  const messages = els.system.value.trim() ? [{ role: 'system', content: els.system.value }, ...history] : [...history];
  const body = { model: els.model.value || undefined, messages, stream: true, stream_options: { include_usage: true }, ...params };

  const convo = conversation;
  const a = { controller: new AbortController(), text: '', chunks: 0, usage: null, finish: null, stopped: false,
              tStart: performance.now(), tFirst: 0, tLast: 0, view: null, frame: 0 };
  current = a;
  setBusy(true);
  a.view = addMessage('assistant', '');
  a.view.div.classList.add('streaming');
  setMeta(a.view, 'waiting…');
  scrollToEnd();
  const paint = () => {
    a.frame = 0;
    setContent(a.view, 'assistant', a.text);
    setMeta(a.view, stats(a));
    scrollToEnd();
  };
  let failure = null;
  try {
    const res = await fetch('v1/chat/completions', { method: 'POST', headers: headers(), body: JSON.stringify(body),
                                                       signal: a.controller.signal });
    if (!res.ok) throw new Error(await errorOf(res));
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (let done = false; !done;) {
      const r = await reader.read();
      if (r.done) break;
      let events;
      [events, buffer] = takeEvents(buffer + decoder.decode(r.value, { stream: true }));
      for (const data of events) {
        if (data === '[DONE]') { done = true; break; }
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
        if (chunk.usage) a.usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.finish_reason) a.finish = choice.finish_reason;
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          a.text += piece;
          a.chunks++;
          a.tLast = performance.now();
          if (!a.tFirst) a.tFirst = a.tLast;
          if (!a.frame) a.frame = requestAnimationFrame(paint);
        }
      }
    }
  } catch (e) {
    if (e.name === 'AbortError') a.stopped = true;
    else failure = e;
  }
  if (a.frame) cancelAnimationFrame(a.frame);
  current = null;
  setBusy(false);
  if (convo !== conversation) return;  // cleared meanwhile
  paint();
  a.view.div.classList.remove('streaming');
  if (!a.text && (failure || a.stopped)) {
    // Nothing came back: take the turn out, so that it can be sent again.
    a.view.div.remove();
    question.div.remove();
    els.empty.hidden = history.length > 1;
    history.pop();
    els.input.value = content;
    autoGrow();
    if (failure) addMessage('error', failure.message);
  } else {
    history.push({ role: 'assistant', content: a.text });
    if (failure) addMessage('error', failure.message);
  }
  scrollToEnd();
  els.input.focus();
}

function stop() {
  if (current) current.controller.abort();
}

function clearChat() {
  stop();
  conversation++;
  history.length = 0;
  els.log.replaceChildren();
  els.empty.hidden = false;
  els.input.focus();
}

// ---- layout and keys -------------------------------------------------------------------------

function autoGrow() {
  els.input.style.height = 'auto';
  els.input.style.height = Math.min(els.input.scrollHeight, 200) + 'px';
}

function openSettings(open) {
  els.settings.hidden = !open;
  els.settingsToggle.setAttribute('aria-expanded', String(open));
}

els.form.addEventListener('submit', (e) => {
  e.preventDefault();
  send(els.input.value);
});
els.input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send(els.input.value);
  }
});
els.input.addEventListener('input', autoGrow);
// Esc: stops an answer; else closes the settings where they cover the conversation (phones).
const narrow = window.matchMedia('(max-width: 899px)');
document.addEventListener('keydown', (e) => {
  if (e.key !== 'Escape') return;
  if (current) {
    e.preventDefault();
    stop();
  } else if (narrow.matches && !els.settings.hidden) {
    openSettings(false);
    els.settingsToggle.focus();
  }
});
els.stop.addEventListener('click', stop);
els.clear.addEventListener('click', clearChat);
els.settingsToggle.addEventListener('click', () => {
  const open = els.settings.hidden;
  openSettings(open);
  if (open) els.system.focus();
});
els.settings.addEventListener('change', saveSettings);
els.apiKey.addEventListener('change', () => loadModels(els.model.value));
els.model.addEventListener('change', () => {
  saveSettings();
  describeModel();
});
els.reset.addEventListener('click', () => {
  for (const id of Object.keys(NUMBERS)) $(id).value = '';
  els.system.value = '';
  saveSettings();
});

const saved = loadSettings();
openSettings(!narrow.matches);
loadModels(saved.model);
els.input.focus();
