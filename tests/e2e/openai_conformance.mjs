// Conformance of an OpenAI-compatible server with the official `openai` npm client: chat and
// completions, streaming, n, logprobs, seed, stop, usage, models and typed errors.
//
//   node tests/e2e/openai_conformance.mjs [BASE_URL]      (or APUS_BASE_URL, e.g. http://127.0.0.1:8000/v1)
//   env: APUS_API_KEY (the server's --api_key), APUS_MODEL (default: the first of /v1/models),
//        APUS_MAX_MODEL_LEN (the server's --max_model_len: checks the context-length error)
//
// It starts nothing: tests/test_e2e_openai.cpp runs `apus deploy` on a tiny random-weight model
// and then this file. Random weights answer with random text, so the checks compare the server
// with itself (stream against non-stream, same seed against same seed), never with fixed text.
// Prints one line per check; exits 1 when any failed.
import assert from "node:assert/strict";
import OpenAI from "openai";

const baseURL = process.argv[2] ?? process.env.APUS_BASE_URL;
if (!baseURL) {
  console.error("usage: node openai_conformance.mjs BASE_URL (or set APUS_BASE_URL), e.g. http://127.0.0.1:8000/v1");
  process.exit(2);
}
const apiKey = process.env.APUS_API_KEY ?? "none";
// No retries: a retried 5xx would hide a server error, and errors must come back at once.
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120_000 });
let model = process.env.APUS_MODEL;

const USER = [{ role: "user", content: "浙江的省会在哪?" }];
const FINISH = ["stop", "length"];

// ---- helpers ---------------------------------------------------------------------------------

function checkUsage(u, promptTokens) {
  assert.ok(u, "usage is missing");
  assert.ok(Number.isInteger(u.prompt_tokens) && u.prompt_tokens > 0, `prompt_tokens ${u.prompt_tokens}`);
  assert.ok(Number.isInteger(u.completion_tokens) && u.completion_tokens >= 0);
  assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens);
  if (promptTokens !== undefined) assert.equal(u.prompt_tokens, promptTokens);
}

function checkEnvelope(r, object) {
  assert.equal(r.object, object);
  assert.equal(typeof r.id, "string");
  assert.ok(r.id.length > 0);
  assert.ok(Number.isInteger(r.created) && r.created > 1.6e9, `created ${r.created}`);
  assert.equal(r.model, model);
}

// Reads a chat stream: per choice index its text, role, finish_reason, logprobs; checks every
// chunk's shape on the way.
async function readChatStream(stream) {
  const choices = new Map();
  let id, usage = null, usageChunks = 0, afterUsage = false;
  for await (const chunk of stream) {
    checkEnvelope(chunk, "chat.completion.chunk");
    id ??= chunk.id;
    assert.equal(chunk.id, id, "every chunk of a stream carries the same id");
    assert.ok(!afterUsage, "a chunk after the usage chunk");
    if (chunk.usage) {
      assert.deepEqual(chunk.choices, [], "the usage chunk has no choices");
      usage = chunk.usage;
      usageChunks++;
      afterUsage = true;
      continue;
    }
    assert.equal(chunk.choices.length, 1);
    const c = chunk.choices[0];
    if (!choices.has(c.index)) {
      // The first delta of each choice names the role.
      assert.equal(c.delta.role, "assistant", `first delta of choice ${c.index}: ${JSON.stringify(c.delta)}`);
      choices.set(c.index, { text: "", finish_reason: null, logprobs: [], chunks: 0 });
    }
    const acc = choices.get(c.index);
    assert.equal(acc.finish_reason, null, `choice ${c.index} has a chunk after its finish_reason`);
    acc.chunks++;
    acc.text += c.delta.content ?? "";
    if (c.logprobs?.content) acc.logprobs.push(...c.logprobs.content);
    if (c.finish_reason !== null && c.finish_reason !== undefined) {
      assert.ok(FINISH.includes(c.finish_reason), `finish_reason ${c.finish_reason}`);
      acc.finish_reason = c.finish_reason;
    }
  }
  for (const [i, acc] of choices) assert.ok(acc.finish_reason, `choice ${i} never got a finish_reason`);
  assert.ok(usageChunks <= 1);
  return { choices, usage };
}

async function readCompletionStream(stream) {
  const choices = new Map();
  let id, usage = null;
  for await (const chunk of stream) {
    checkEnvelope(chunk, "text_completion");
    id ??= chunk.id;
    assert.equal(chunk.id, id);
    if (chunk.usage) {
      assert.deepEqual(chunk.choices, []);
      usage = chunk.usage;
      continue;
    }
    assert.equal(usage, null, "a chunk after the usage chunk");
    for (const c of chunk.choices) {
      if (!choices.has(c.index)) choices.set(c.index, { text: "", finish_reason: null, logprobs: null });
      const acc = choices.get(c.index);
      assert.equal(acc.finish_reason, null, `choice ${c.index} has a chunk after its finish_reason`);
      acc.text += c.text;
      if (c.logprobs) {
        acc.logprobs ??= { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
        for (const k of Object.keys(acc.logprobs)) acc.logprobs[k].push(...c.logprobs[k]);
      }
      if (c.finish_reason) {
        assert.ok(FINISH.includes(c.finish_reason), `finish_reason ${c.finish_reason}`);
        acc.finish_reason = c.finish_reason;
      }
    }
  }
  for (const [i, acc] of choices) assert.ok(acc.finish_reason, `choice ${i} never got a finish_reason`);
  return { choices, usage };
}

// Expects `promise` to reject with the client's typed error `Type` and HTTP `status`.
async function expectError(promise, Type, status, param) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof Type, `expected ${Type.name}, got ${e?.constructor?.name}: ${e?.message}`);
    assert.equal(e.status, status);
    assert.equal(typeof e.error?.message, "string", `error body: ${JSON.stringify(e.error)}`);
    assert.ok(e.error.message.length > 0);
    assert.equal(typeof e.error.type, "string");
    if (param !== undefined) assert.equal(e.param, param);
    return e;
  }
  assert.fail(`expected ${Type.name} (${status}), but the request succeeded`);
}

function checkChatLogprobs(lp, numTokens, top) {
  assert.ok(Array.isArray(lp?.content), `logprobs.content: ${JSON.stringify(lp)}`);
  assert.equal(lp.content.length, numTokens);
  for (const t of lp.content) {
    assert.equal(typeof t.token, "string");
    assert.ok(t.logprob <= 0, `logprob ${t.logprob}`);
    assert.ok(Array.isArray(t.bytes));
    assert.equal(t.top_logprobs.length, top);
    for (let k = 1; k < t.top_logprobs.length; ++k) assert.ok(t.top_logprobs[k - 1].logprob >= t.top_logprobs[k].logprob);
  }
}

// ---- checks ----------------------------------------------------------------------------------

const checks = [];
const check = (name, fn) => checks.push({ name, fn });

check("models.list", async () => {
  const ids = [];
  for await (const m of client.models.list()) {
    assert.equal(m.object, "model");
    assert.equal(typeof m.owned_by, "string");
    ids.push(m.id);
  }
  assert.ok(ids.length >= 1);
  model ??= ids[0];
  assert.ok(ids.includes(model), `${model} not in ${ids}`);
});

check("chat: non-stream and stream agree at temperature 0", async () => {
  const req = { model, messages: USER, max_tokens: 24, temperature: 0 };
  const r = await client.chat.completions.create(req);
  checkEnvelope(r, "chat.completion");
  assert.equal(r.choices.length, 1);
  const c = r.choices[0];
  assert.equal(c.index, 0);
  assert.equal(c.message.role, "assistant");
  assert.equal(typeof c.message.content, "string");
  assert.ok(FINISH.includes(c.finish_reason));
  assert.equal(c.logprobs, null);
  checkUsage(r.usage);
  assert.ok(r.usage.completion_tokens <= 24);
  if (c.finish_reason === "length") assert.equal(r.usage.completion_tokens, 24);

  const s = await readChatStream(await client.chat.completions.create({ ...req, stream: true }));
  assert.deepEqual([...s.choices.keys()], [0]);
  assert.equal(s.choices.get(0).text, c.message.content);
  assert.equal(s.choices.get(0).finish_reason, c.finish_reason);
  assert.equal(s.usage, null, "usage without stream_options.include_usage");
});

check("chat: stream_options.include_usage", async () => {
  const req = { model, messages: USER, max_tokens: 8, temperature: 0 };
  const r = await client.chat.completions.create(req);
  const s = await readChatStream(
    await client.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } }));
  assert.deepEqual(s.usage, r.usage);
});

check("chat: max_completion_tokens (OpenAI's newer name)", async () => {
  const r = await client.chat.completions.create({ model, messages: USER, temperature: 0, max_completion_tokens: 16 });
  assert.ok(FINISH.includes(r.choices[0].finish_reason));
  assert.ok(r.usage.completion_tokens <= 16);
});

check("completions: string prompt, stream and non-stream", async () => {
  const req = { model, prompt: "浙江 -> 杭州\n安徽 -> 合肥\n四川 ->", max_tokens: 16, temperature: 0 };
  const r = await client.completions.create(req);
  checkEnvelope(r, "text_completion");
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].index, 0);
  assert.equal(typeof r.choices[0].text, "string");
  assert.ok(FINISH.includes(r.choices[0].finish_reason));
  checkUsage(r.usage);
  const s = await readCompletionStream(
    await client.completions.create({ ...req, stream: true, stream_options: { include_usage: true } }));
  assert.equal(s.choices.get(0).text, r.choices[0].text);
  assert.equal(s.choices.get(0).finish_reason, r.choices[0].finish_reason);
  assert.deepEqual(s.usage, r.usage);
});

check("completions: list of strings, token ids, list of token-id lists", async () => {
  const prompts = ["Hello, my name is", "The capital of France is"];
  const single = [];
  for (const prompt of prompts) single.push(await client.completions.create({ model, prompt, max_tokens: 8, temperature: 0 }));
  const r = await client.completions.create({ model, prompt: prompts, max_tokens: 8, temperature: 0 });
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1]);
  for (let i = 0; i < 2; ++i) assert.equal(r.choices[i].text, single[i].choices[0].text);
  assert.equal(r.usage.prompt_tokens, single[0].usage.prompt_tokens + single[1].usage.prompt_tokens);

  // The same prompts as token ids (vLLM's /tokenize gives them) answer the same.
  const ids = [];
  for (const prompt of prompts) {
    const t = await fetch(new URL("../tokenize", baseURL.endsWith("/") ? baseURL : baseURL + "/"), {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${apiKey}` },
      body: JSON.stringify({ model, prompt }),
    });
    assert.equal(t.status, 200);
    const body = await t.json();
    assert.equal(body.count, body.tokens.length);
    ids.push(body.tokens);
  }
  const one = await client.completions.create({ model, prompt: ids[0], max_tokens: 8, temperature: 0 });
  assert.equal(one.choices[0].text, single[0].choices[0].text);
  assert.equal(one.usage.prompt_tokens, ids[0].length);
  const both = await client.completions.create({ model, prompt: ids, max_tokens: 8, temperature: 0 });
  assert.deepEqual(both.choices.map((c) => c.text), single.map((s) => s.choices[0].text));
});

check("n > 1: chat and completions, streamed too, same seed same choices", async () => {
  const chatReq = { model, messages: USER, max_tokens: 12, temperature: 1, n: 3, seed: 7 };
  const r = await client.chat.completions.create(chatReq);
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
  for (const c of r.choices) assert.ok(FINISH.includes(c.finish_reason));
  assert.ok(new Set(r.choices.map((c) => c.message.content)).size > 1, "n choices sampled at temperature 1 all alike");
  const s = await readChatStream(await client.chat.completions.create({ ...chatReq, stream: true }));
  assert.deepEqual([...s.choices.keys()].sort(), [0, 1, 2]);
  for (const c of r.choices) {
    assert.equal(s.choices.get(c.index).text, c.message.content, `choice ${c.index}`);
    assert.equal(s.choices.get(c.index).finish_reason, c.finish_reason);
  }

  const cmplReq = { model, prompt: ["one", "two"], max_tokens: 6, temperature: 1, n: 2, seed: 11 };
  const rc = await client.completions.create(cmplReq);
  assert.deepEqual(rc.choices.map((c) => c.index), [0, 1, 2, 3]);
  const sc = await readCompletionStream(await client.completions.create({ ...cmplReq, stream: true }));
  assert.deepEqual([...sc.choices.keys()].sort(), [0, 1, 2, 3]);
  for (const c of rc.choices) assert.equal(sc.choices.get(c.index).text, c.text, `choice ${c.index}`);
});

check("logprobs: chat (logprobs + top_logprobs), stream and non-stream", async () => {
  const req = { model, messages: USER, max_tokens: 10, temperature: 0, logprobs: true, top_logprobs: 3 };
  const r = await client.chat.completions.create(req);
  const c = r.choices[0];
  checkChatLogprobs(c.logprobs, r.usage.completion_tokens, 3);
  // Greedy: each chosen token is the most likely one.
  for (const t of c.logprobs.content) {
    assert.equal(t.top_logprobs[0].token, t.token);
    assert.ok(Math.abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6);
  }
  const s = await readChatStream(await client.chat.completions.create({ ...req, stream: true }));
  assert.deepEqual(s.choices.get(0).logprobs, c.logprobs.content);
  // logprobs without top_logprobs: the chosen tokens only.
  const r0 = await client.chat.completions.create({ ...req, top_logprobs: undefined });
  checkChatLogprobs(r0.choices[0].logprobs, r0.usage.completion_tokens, 0);
});

check("logprobs: completions (logprobs N, echo)", async () => {
  const prompt = "The quick brown fox";
  const base = { model, prompt, max_tokens: 6, temperature: 0 };
  const plain = await client.completions.create(base);
  const r = await client.completions.create({ ...base, logprobs: 2 });
  const lp = r.choices[0].logprobs;
  assert.equal(r.choices[0].text, plain.choices[0].text);
  assert.equal(lp.tokens.length, r.usage.completion_tokens);
  for (const k of ["token_logprobs", "top_logprobs", "text_offset"]) assert.equal(lp[k].length, lp.tokens.length, k);
  for (let i = 0; i < lp.tokens.length; ++i) {
    assert.ok(lp.token_logprobs[i] <= 0);
    const alts = Object.entries(lp.top_logprobs[i]);
    assert.ok(alts.length >= 1 && alts.length <= 3, `top_logprobs[${i}]: ${JSON.stringify(lp.top_logprobs[i])}`);
    assert.ok(Math.max(...alts.map(([, v]) => v)) >= lp.token_logprobs[i] - 1e-6);
    if (i) assert.ok(lp.text_offset[i] >= lp.text_offset[i - 1]);
  }
  const s = await readCompletionStream(await client.completions.create({ ...base, logprobs: 2, stream: true }));
  assert.deepEqual(s.choices.get(0).logprobs.tokens, lp.tokens);
  assert.deepEqual(s.choices.get(0).logprobs.token_logprobs, lp.token_logprobs);

  // echo: the prompt comes back in front, with its tokens' logprobs (none for the first).
  const e = await client.completions.create({ ...base, logprobs: 1, echo: true });
  const elp = e.choices[0].logprobs;
  assert.equal(e.choices[0].text, prompt + plain.choices[0].text);
  assert.equal(elp.tokens.length, e.usage.prompt_tokens + e.usage.completion_tokens);
  assert.equal(elp.token_logprobs[0], null);
  assert.equal(elp.top_logprobs[0], null);
  assert.equal(elp.text_offset[0], 0);
  for (let i = 1; i < elp.tokens.length; ++i) assert.ok(elp.token_logprobs[i] <= 0);
  assert.deepEqual(elp.tokens.slice(e.usage.prompt_tokens), lp.tokens);
  // echo without logprobs
  const e0 = await client.completions.create({ ...base, echo: true });
  assert.equal(e0.choices[0].text, prompt + plain.choices[0].text);
  assert.equal(e0.choices[0].logprobs, null);
});

check("seed: same seed, same sample; another seed, another", async () => {
  const req = { model, prompt: "Once upon a time", max_tokens: 16, temperature: 1, top_p: 0.95 };
  const a = await client.completions.create({ ...req, seed: 1234 });
  const b = await client.completions.create({ ...req, seed: 1234 });
  const c = await client.completions.create({ ...req, seed: 4321 });
  assert.equal(a.choices[0].text, b.choices[0].text);
  assert.notEqual(a.choices[0].text, c.choices[0].text);
  const chat = { model, messages: USER, max_tokens: 12, temperature: 0.8, seed: 99 };
  const x = await client.chat.completions.create(chat);
  const y = await client.chat.completions.create(chat);
  assert.equal(x.choices[0].message.content, y.choices[0].message.content);
});

check("stop strings (string and list), stream and non-stream", async () => {
  const req = { model, prompt: "Once upon a time", max_tokens: 32, temperature: 0 };
  const full = (await client.completions.create(req)).choices[0].text;
  // A stop string taken from the middle of the greedy answer: the answer must end just before
  // its first occurrence.
  const chars = Array.from(full);
  assert.ok(chars.length >= 6, `answer too short to cut: ${JSON.stringify(full)}`);
  const mid = Math.floor(chars.length / 2);
  const stop = chars.slice(mid, mid + 2).join("");
  const expected = full.slice(0, full.indexOf(stop));
  const r = await client.completions.create({ ...req, stop });
  assert.equal(r.choices[0].text, expected);
  assert.equal(r.choices[0].finish_reason, "stop");
  const rl = await client.completions.create({ ...req, stop: ["\u0001never", stop] });
  assert.equal(rl.choices[0].text, expected);
  const s = await readCompletionStream(await client.completions.create({ ...req, stop: [stop], stream: true }));
  assert.equal(s.choices.get(0).text, expected);
  assert.equal(s.choices.get(0).finish_reason, "stop");

  const chatFull = (await client.chat.completions.create({ model, messages: USER, max_tokens: 32, temperature: 0 })).choices[0]
    .message.content;
  const cc = Array.from(chatFull);
  if (cc.length >= 6) {
    const cstop = cc.slice(Math.floor(cc.length / 2), Math.floor(cc.length / 2) + 2).join("");
    const cr = await client.chat.completions.create({ model, messages: USER, max_tokens: 32, temperature: 0, stop: [cstop] });
    assert.equal(cr.choices[0].message.content, chatFull.slice(0, chatFull.indexOf(cstop)));
    assert.equal(cr.choices[0].finish_reason, "stop");
  }
});

check("errors: typed exceptions (400, 404, 401), and the server keeps serving", async () => {
  await expectError(client.chat.completions.create({ model, messages: USER, temperature: 5 }), OpenAI.BadRequestError, 400,
    "temperature");
  await expectError(client.chat.completions.create({ model, messages: USER, n: 0 }), OpenAI.BadRequestError, 400, "n");
  await expectError(client.chat.completions.create({ model, messages: [] }), OpenAI.BadRequestError, 400, "messages");
  await expectError(client.chat.completions.create({ model, messages: USER, max_tokens: "many" }), OpenAI.BadRequestError,
    400, "max_tokens");
  await expectError(client.completions.create({ model, prompt: "x", logprobs: 99 }), OpenAI.BadRequestError, 400, "logprobs");
  await expectError(client.completions.create({ model, prompt: [] }), OpenAI.BadRequestError, 400, "prompt");
  await expectError(client.completions.create({ model, prompt: [99999999] }), OpenAI.BadRequestError, 400);
  await expectError(client.completions.create({ model, prompt: "x", stream_options: { include_usage: true } }),
    OpenAI.BadRequestError, 400, "stream_options");
  // An error in a streamed request comes back before the stream starts, as a typed error too.
  await expectError(client.chat.completions.create({ model, messages: USER, top_p: 7, stream: true }),
    OpenAI.BadRequestError, 400, "top_p");
  if (process.env.APUS_MAX_MODEL_LEN) {
    const long = "hello ".repeat(Number(process.env.APUS_MAX_MODEL_LEN) + 10);
    const e = await expectError(client.completions.create({ model, prompt: long, max_tokens: 4 }), OpenAI.BadRequestError, 400);
    assert.equal(e.code, "context_length_exceeded");
  }

  const nf = await expectError(client.chat.completions.create({ model: "no-such-model", messages: USER }),
    OpenAI.NotFoundError, 404);
  assert.equal(nf.code, "model_not_found");
  await expectError(client.completions.create({ model: "no-such-model", prompt: "x" }), OpenAI.NotFoundError, 404);

  const wrongKey = new OpenAI({ baseURL, apiKey: apiKey + "-wrong", maxRetries: 0 });
  await expectError(wrongKey.models.list(), OpenAI.AuthenticationError, 401);
  await expectError(wrongKey.chat.completions.create({ model, messages: USER, max_tokens: 2 }), OpenAI.AuthenticationError, 401);

  // Still serving, on new connections and old ones.
  const ok = await client.chat.completions.create({ model, messages: USER, max_tokens: 4, temperature: 0 });
  assert.ok(FINISH.includes(ok.choices[0].finish_reason));
  const ok2 = await new OpenAI({ baseURL, apiKey, maxRetries: 0 }).completions.create({ model, prompt: "x", max_tokens: 2 });
  assert.equal(ok2.choices.length, 1);
});

// ---- run -------------------------------------------------------------------------------------

let failed = 0;
for (const { name, fn } of checks) {
  const t0 = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}\n     ${(e?.stack ?? String(e)).replaceAll("\n", "\n     ")}`);
  }
}
console.log(`${checks.length - failed}/${checks.length} checks passed against ${baseURL} (model ${model})`);
process.exit(failed ? 1 : 0);
