// The web chat page of `apus app-ui` in Debian's chromium, driven by playwright-core, as a user
// would use it. tests/test_ui.cpp starts the server (a scripted tiny model: random text at
// temperature 1, APUS_REPLY at temperature 0) and runs this as
//   APUS_API_KEY=... APUS_MODEL=... APUS_REPLY=... APUS_SCREENSHOTS=DIR node chat_ui.mjs http://HOST:PORT
// Exits non-zero on the first failed check; leaves DIR/ui-test-screenshot*.png behind.
import assert from 'node:assert/strict';
import path from 'node:path';
import { chromium } from 'playwright-core';

const base = process.argv[2];
const { APUS_API_KEY: key, APUS_MODEL: model, APUS_REPLY: reply, APUS_SCREENSHOTS: shots } = process.env;
assert.ok(base && key && model && reply && shots, 'usage: APUS_API_KEY= APUS_MODEL= APUS_REPLY= APUS_SCREENSHOTS= node chat_ui.mjs URL');

let checks = 0;
const check = (ok, what) => { assert.ok(ok, what); checks++; };
const step = (what) => console.log(`- ${what}`);

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  // The machine has no network: without these, chromium keeps trying to reach Google's hosts.
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--no-first-run', '--disable-quic', '--disable-sync'],
  timeout: 60_000,
});
const failures = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(60_000);  // generous: the sanitizer build generates slowly
  page.on('pageerror', (e) => failures.push(`page error: ${e.message}`));
  page.on('dialog', (d) => { failures.push(`a dialog opened: ${d.message()}`); d.dismiss(); });
  page.on('console', (m) => {
    // The browser logs every non-2xx fetch; those the test causes (401, 400) are expected.
    if (m.type() === 'error' && !/Failed to load resource: the server responded with a status of (401|400)/.test(m.text()))
      failures.push(`console error: ${m.text()}`);
  });
  const bodies = [];  // the chat requests the page sent
  page.on('request', (r) => { if (r.url().endsWith('/v1/chat/completions')) bodies.push(r.postDataJSON()); });

  const assistants = page.locator('.msg.assistant');
  const lastText = () => assistants.last().locator('.body').textContent();
  const lastMeta = () => assistants.last().locator('.meta').textContent();
  const idle = () => page.waitForFunction(() => !document.querySelector('.msg.streaming') &&
                                                !document.getElementById('send').hidden);
  async function say(text) {
    const before = bodies.length;
    await page.fill('#input', text);
    await page.press('#input', 'Enter');
    await idle();
    check(bodies.length === before + 1, `one request for "${text}"`);
    return bodies.at(-1);
  }
  async function settings(values) {
    for (const [id, v] of Object.entries(values)) await page.fill('#' + id, String(v));
  }
  async function running() {
    const text = await (await fetch(base + '/metrics')).text();
    return Number(/^apus:num_requests_running(?:\{[^}]*\})? (\S+)/m.exec(text)[1]);
  }

  step('the page loads without the key and asks for it');
  await page.goto(base + '/');
  await page.waitForSelector('#model-note.error');
  check(/API key/.test(await page.textContent('#model-note')), 'the 401 is explained');
  check(await page.isVisible('#settings'), 'settings open on a wide screen');
  await page.fill('#api_key', key);
  await page.press('#api_key', 'Tab');  // change: the models are fetched again
  await page.waitForFunction((m) => [...document.querySelectorAll('#model option')].some((o) => o.value === m), model);
  check(await page.inputValue('#model') === model, 'the model selector lists /v1/models');
  check(/context: \d+ tokens/.test(await page.textContent('#model-note')), 'the model is described');

  step('keyboard: Shift+Enter is a new line, Enter sends');
  await page.focus('#input');
  await page.keyboard.type('a');
  await page.keyboard.press('Shift+Enter');
  await page.keyboard.type('b');
  check(await page.inputValue('#input') === 'a\nb' && bodies.length === 0, 'Shift+Enter does not send');
  await page.fill('#input', '');

  step('streamed text grows, and Stop cancels the request');
  await settings({ temperature: 1, max_tokens: 3000 });
  await page.fill('#input', 'Tell me a long story');
  await page.press('#input', 'Enter');
  check(await page.isVisible('#stop') && !(await page.isVisible('#send')), 'Stop replaces Send while generating');
  await page.waitForFunction(() => document.querySelector('.msg.assistant .body').textContent.length > 0);
  const first = (await lastText()).length;
  await page.waitForFunction((n) => document.querySelector('.msg.assistant .body').textContent.length > n + 20, first);
  const second = (await lastText()).length;
  check(second > first, `the answer grows as it streams (${first} then ${second} characters)`);
  check(await page.getAttribute('#log', 'aria-busy') === 'true', 'the log says it is busy');
  await page.click('#stop');
  await idle();
  check(/stopped/.test(await lastMeta()), 'the answer is marked stopped');
  const stoppedAt = (await lastText()).length;
  for (let i = 0; i < 100 && (await running()) > 0; i++) await page.waitForTimeout(100);
  check(await running() === 0, 'the server cancelled the request');
  await page.waitForTimeout(300);
  check((await lastText()).length === stoppedAt, 'nothing arrives after Stop');
  const counted = Number(/^≈(\d+) tokens/.exec(await lastMeta())[1]);
  check(counted > 0 && counted < 3000, `stopped after ${counted} of up to 3000 tokens`);
  check(await page.evaluate(() => document.activeElement.id) === 'input', 'the input has the focus back');

  step('Esc stops too');
  await page.fill('#input', 'Another long one');
  await page.press('#input', 'Enter');
  await page.waitForFunction(() => [...document.querySelectorAll('.msg.assistant .body')].at(-1).textContent.length > 0);
  await page.keyboard.press('Escape');
  await idle();
  check(/stopped/.test(await lastMeta()), 'Esc stops the answer');
  check(bodies.at(-1).messages.length === 3, 'the stopped answer is kept in the history');

  step('Clear empties the conversation');
  await page.click('#clear');
  check(await page.locator('.msg').count() === 0 && await page.isVisible('#empty'), 'nothing left on the page');

  step('settings go into the request; the same seed gives the same answer');
  await page.fill('#system', 'You are terse.');
  await settings({ temperature: 1, top_p: 0.9, max_tokens: 12, seed: 1234 });
  const body = await say('hi');
  check(body.model === model && body.stream === true && body.stream_options.include_usage === true, 'a streamed request');
  check(body.temperature === 1 && body.top_p === 0.9 && body.max_tokens === 12 && body.seed === 1234,
        `the settings are sent: ${JSON.stringify(body)}`);
  check(JSON.stringify(body.messages) === JSON.stringify([{ role: 'system', content: 'You are terse.' },
                                                          { role: 'user', content: 'hi' }]), 'system prompt and message');
  const answer = await lastText();
  const meta = await lastMeta();
  check(/^12 tokens · [\d.]+ tokens\/s · first token [\d.]+ s · cut at max tokens$/.test(meta), `usage and speed: "${meta}"`);
  await page.click('#clear');
  const again = await say('hi');
  check(again.messages.length === 2, 'Clear also cleared the history sent');
  check(await lastText() === answer, `seed 1234 again: the same answer ("${answer}")`);

  step('a model reply with <script> shows as text; multi-turn history');
  await page.click('#clear');
  await settings({ temperature: 0, max_tokens: 64 });
  await say('Say something risky');
  const shown = reply.replace(/\*\*/g, '');  // **not** is rendered bold
  check(await lastText() === shown, `the reply is shown as text: "${await lastText()}"`);
  const answerBody = assistants.last().locator('.body');
  check(await answerBody.locator('script, img, iframe, object, embed').count() === 0, 'no element from the reply\'s markup');
  check(await answerBody.locator('strong').textContent() === 'not', 'Markdown is rendered');
  check(!/stopped|cut/.test(await lastMeta()), 'the reply ended by itself');
  // A second turn, typed over several lines; the user's Markdown is rendered too.
  await page.focus('#input');
  for (const [i, line] of ['And in a code block:', '```js', "console.log('<b>hi</b>')", '```'].entries()) {
    if (i) await page.keyboard.press('Shift+Enter');
    await page.keyboard.type(line);
  }
  const before = bodies.length;
  await page.keyboard.press('Enter');
  await idle();
  const turn2 = bodies[before];
  check(turn2.messages.length === 4 && turn2.messages[2].role === 'assistant' && turn2.messages[2].content === reply,
        'the history carries the previous reply verbatim');
  check(await page.locator('.msg.user pre code').last().textContent() === "console.log('<b>hi</b>')", 'code block');
  check(await page.locator('.msg.user pre b').count() === 0, 'no element from the user\'s markup');

  step('errors are shown in the page');
  await settings({ max_tokens: 1000000 });
  await page.fill('#input', 'too long');
  await page.press('#input', 'Enter');
  await page.waitForSelector('.msg.error');
  const error = await page.textContent('.msg.error .body');
  check(/HTTP 400/.test(error) && /max_tokens|context|length/i.test(error), `the server's message: "${error}"`);
  check(await page.inputValue('#input') === 'too long', 'the failed message is back in the input');
  check(await assistants.count() === 2, 'no answer added for it');
  await settings({ max_tokens: 64 });

  step('screenshots (desktop, phone)');
  await page.screenshot({ path: path.join(shots, 'ui-test-screenshot.png') });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click('#settings-toggle');  // close: it covers the conversation on a phone
  check(!(await page.isVisible('#settings')), 'settings close');
  await page.waitForTimeout(100);
  check(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'no sideways scrolling at 390 px');
  for (const sel of ['#input', '#send', '#clear', '#settings-toggle', '#model']) {
    const box = await page.locator(sel).boundingBox();
    check(box && box.x >= 0 && box.x + box.width <= 390 && box.y >= 0 && box.y + box.height <= 844, `${sel} is on screen`);
  }
  await page.screenshot({ path: path.join(shots, 'ui-test-screenshot-phone.png') });
  await page.click('#settings-toggle');
  check(await page.evaluate(() => document.activeElement.id) === 'system', 'opening settings focuses the first field');
  await page.screenshot({ path: path.join(shots, 'ui-test-screenshot-phone-settings.png') });
  await page.keyboard.press('Escape');
  check(!(await page.isVisible('#settings')) && await page.evaluate(() => document.activeElement.id) === 'settings-toggle',
        'Esc closes the settings on a phone');

  step('every control has a label');
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea, button')]
    .filter((e) => !(e.labels && e.labels.length) && !e.textContent.trim() && !e.getAttribute('aria-label')).map((e) => e.id));
  check(unlabelled.length === 0, `unlabelled: ${unlabelled}`);
} finally {
  await browser.close();
}
assert.deepEqual(failures, [], failures.join('\n'));
console.log(`${checks} checks passed`);
