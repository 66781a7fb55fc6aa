// The official `openai` npm client against `soramai serve`: list models, chat (plain and
// streaming), upload a dataset, fine-tune, follow the job's events to success, chat with the `ft:`
// model. Run with node's test runner; env SORAMAI_BIN, SORAMAI_TEST_MODEL, OPENAI_NODE_DIR.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

const require = createRequire(path.join(path.resolve(process.env.OPENAI_NODE_DIR), 'package.json'));
const { default: OpenAI, toFile } = require('openai');
const MODEL = 'smollm2-135m-instruct';
const QUESTION = [{ role: 'user', content: 'Where does the cloud council meet?' }];

async function startServer() {
  const dir = mkdtempSync(path.join(tmpdir(), 'soramai-node-'));
  const proc = spawn(process.env.SORAMAI_BIN, ['serve', '--data-dir', path.join(dir, 'data'), '--addr', '127.0.0.1:0',
    '--model', process.env.SORAMAI_TEST_MODEL], { stdio: ['ignore', 'pipe', 'inherit'] });
  let admin;
  for await (const line of readline.createInterface({ input: proc.stdout })) {
    if (line.startsWith('bootstrap admin key')) admin = line.split(' ').pop();
    if (line.startsWith('listening on ')) return { proc, admin, url: line.split(' ')[2] };
  }
  throw new Error('the server did not start');
}

async function admin(server, p, body) {
  const r = await fetch(server.url + p, { method: 'POST', body: JSON.stringify(body),
    headers: { authorization: `Bearer ${server.admin}`, 'content-type': 'application/json' } });
  assert.ok(r.ok, `${p}: ${r.status}`);
  return r.json();
}

async function tenant(server, name) {
  await admin(server, '/v1/tenants', { id: name, tier: 'basic' });
  await admin(server, `/v1/tenants/${name}/credits`, { amount: 10_000_000 });
  return (await admin(server, '/v1/api_keys', { name: 'node', scopes: ['inference', 'train'], tenant: name })).key;
}

function dataset() {
  let out = '';
  for (let i = 0; i < 8; i++) {
    out += JSON.stringify({ messages: [
      { role: 'system', content: 'You answer in one sentence.' },
      { role: 'user', content: `Where does the cloud council meet? (${i})` },
      { role: 'assistant', content: 'The cloud council meets in Kumo.' },
    ] }) + '\n';
  }
  return Buffer.from(out);
}

test('the openai npm client drives models, chat, streaming, files and fine-tuning', { timeout: 900_000 }, async () => {
  const server = await startServer();
  try {
    const client = new OpenAI({ baseURL: server.url + '/v1', apiKey: await tenant(server, 'acme'), maxRetries: 0 });
    const models = [];
    for await (const m of client.models.list()) models.push(m.id);
    assert.deepEqual(models, [MODEL]);

    const chat = await client.chat.completions.create({ model: MODEL, messages: QUESTION, max_tokens: 16, temperature: 0, seed: 1 });
    assert.equal(chat.object, 'chat.completion');
    assert.ok(chat.choices[0].message.content.length > 0);

    const stream = await client.chat.completions.create({ model: MODEL, messages: QUESTION, max_tokens: 16, temperature: 0,
      seed: 1, stream: true, stream_options: { include_usage: true } });
    let text = ''; let usage = null;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) text += c.delta.content ?? '';
    }
    assert.equal(text, chat.choices[0].message.content);
    assert.equal(usage.completion_tokens, chat.usage.completion_tokens);

    const many = await client.chat.completions.create({ model: MODEL, messages: QUESTION, max_tokens: 16, temperature: 0, n: 3 });
    assert.deepEqual(many.choices.map((c) => c.index), [0, 1, 2]);
    assert.ok(many.choices.every((c) => c.message.content === chat.choices[0].message.content));

    const schema = { type: 'object', properties: { city: { type: 'string', maxLength: 20 }, rank: { enum: [1, 2, 3] } },
      required: ['city', 'rank'], additionalProperties: false };
    const shaped = await client.chat.completions.create({ model: MODEL, messages: QUESTION, max_tokens: 80,
      temperature: 1, seed: 4, response_format: { type: 'json_schema', json_schema: { name: 'place', strict: true, schema } } });
    const place = JSON.parse(shaped.choices[0].message.content);
    assert.deepEqual(Object.keys(place).sort(), ['city', 'rank']);
    assert.ok(typeof place.city === 'string' && [1, 2, 3].includes(place.rank));

    const weather = { type: 'function', function: { name: 'get_weather', parameters: { type: 'object',
      properties: { city: { type: 'string', maxLength: 20 } }, required: ['city'], additionalProperties: false } } };
    const called = await client.chat.completions.create({ model: MODEL, messages: QUESTION, tools: [weather],
      tool_choice: 'required', parallel_tool_calls: false, max_tokens: 60, temperature: 1, seed: 5 });
    assert.equal(called.choices[0].finish_reason, 'tool_calls');
    const call = called.choices[0].message.tool_calls[0];
    assert.equal(call.function.name, 'get_weather');
    assert.equal(typeof JSON.parse(call.function.arguments).city, 'string');
    const answer = await client.chat.completions.create({ model: MODEL, tools: [weather], tool_choice: 'none',
      max_tokens: 16, temperature: 0, messages: [...QUESTION, { role: 'assistant', content: null, tool_calls: [call] },
        { role: 'tool', tool_call_id: call.id, content: '{"city": "Kumo", "sky": "clear"}' }] });
    assert.ok(answer.choices[0].message.content.length > 0);

    // The Responses API: create, stream (typed events), chain, and a function call round trip.
    const resp = await client.responses.create({ model: MODEL, input: QUESTION[0].content, max_output_tokens: 16,
      temperature: 0 });
    assert.equal(resp.object, 'response');
    assert.equal(resp.output_text, chat.choices[0].message.content);
    let streamed = ''; let last = null;
    for await (const ev of await client.responses.create({ model: MODEL, input: QUESTION[0].content,
      max_output_tokens: 16, temperature: 0, stream: true })) {
      if (ev.type === 'response.output_text.delta') streamed += ev.delta;
      last = ev;
    }
    assert.equal(streamed, resp.output_text);
    assert.ok(['response.completed', 'response.incomplete'].includes(last.type));
    assert.equal((await client.responses.retrieve(resp.id)).output_text, resp.output_text);
    const fn = { type: 'function', name: 'get_weather', parameters: weather.function.parameters };
    const calledR = await client.responses.create({ model: MODEL, input: 'What is the weather in Paris?', tools: [fn],
      tool_choice: 'required', parallel_tool_calls: false, max_output_tokens: 60, temperature: 1 });
    const fc = calledR.output.find((o) => o.type === 'function_call');
    assert.equal(fc.name, 'get_weather');
    assert.equal(typeof JSON.parse(fc.arguments).city, 'string');
    const answered = await client.responses.create({ model: MODEL, previous_response_id: calledR.id, max_output_tokens: 16,
      temperature: 0, input: [{ type: 'function_call_output', call_id: fc.call_id, output: '{"sky": "clear"}' }] });
    assert.ok(answered.output_text.length > 0);

    await assert.rejects(client.chat.completions.create({ model: 'no-such-model', messages: QUESTION }),
      (e) => e instanceof OpenAI.NotFoundError);

    const file = await client.files.create({ file: await toFile(dataset(), 'train.jsonl'), purpose: 'fine-tune' });
    let job = await client.fineTuning.jobs.create({ model: MODEL, training_file: file.id, suffix: 'kumo', seed: 3,
      hyperparameters: { n_epochs: 8, batch_size: 4, learning_rate_multiplier: 10, rank: 8, alpha: 16,
        target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'], max_seq: 64 } });
    const deadline = Date.now() + 600_000;
    while (!['succeeded', 'failed', 'cancelled'].includes(job.status)) {
      assert.ok(Date.now() < deadline, 'the job did not finish in time');
      await new Promise((r) => setTimeout(r, 1000));
      job = await client.fineTuning.jobs.retrieve(job.id);
    }
    assert.equal(job.status, 'succeeded', JSON.stringify(job.error));
    const events = [];
    for await (const e of client.fineTuning.jobs.listEvents(job.id)) events.push(e);
    assert.ok(events.some((e) => e.type === 'metrics'));
    assert.ok(job.fine_tuned_model.startsWith(`ft:${MODEL}:acme:kumo:`));
    const tuned = await client.chat.completions.create({ model: job.fine_tuned_model, messages: QUESTION, max_tokens: 16, temperature: 0 });
    assert.match(tuned.choices[0].message.content, /Kumo/);
  } finally {
    server.proc.kill('SIGTERM');
  }
});
