"""The official `openai` Python client, with strict response validation, against `soramai serve`:
list models, chat (plain and streaming), upload a dataset, fine-tune, follow the job's events to
success, chat with the `ft:` model. Usage: openai_flow.py SORAMAI_BINARY MODEL.gguf"""
import json
import sys
import time

import jsonschema
import openai
from openai import OpenAI

from common import Server, dataset

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "Where does the cloud council meet?"}]


# Schemas of the shapes apps ask for: nested objects, arrays, enums, required fields, bounded
# numbers, $ref/$defs, anyOf. Strings and arrays are bounded so a 135M model ends within max_tokens.
def _text(n=16):
    return {"type": "string", "maxLength": n}


SCHEMAS = [
    {"type": "object", "properties": {"name": _text(), "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": _text(10), "minItems": 1, "maxItems": 3}},
     "required": ["tags"], "additionalProperties": False},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
     "required": ["color", "ok"], "additionalProperties": False},
    {"type": "object", "properties": {"price": {"type": "number", "minimum": 0.5, "maximum": 99.5}},
     "required": ["price"], "additionalProperties": False},
    {"type": "object", "properties": {"owner": {"$ref": "#/$defs/person"}}, "required": ["owner"],
     "additionalProperties": False,
     "$defs": {"person": {"type": "object", "properties": {"first": _text(), "last": _text()},
                          "required": ["first", "last"], "additionalProperties": False}}},
    {"type": "object", "properties": {"id": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 999},
                                                       {"type": "string", "pattern": "^[a-z]{3}$"}]}},
     "required": ["id"], "additionalProperties": False},
    {"type": "object", "properties": {"address": {"type": "object", "properties": {
        "city": _text(20), "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
        "required": ["city", "zip"], "additionalProperties": False}}, "required": ["address"],
     "additionalProperties": False},
    {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -5, "maximum": 5}},
                                "required": ["x"], "additionalProperties": False}, "minItems": 2, "maxItems": 2},
]


def structured_outputs(client):
    """Every strict json_schema output parses and validates (jsonschema), greedy and sampled,
    plain and streamed; json_object gives an object; a schema the engine cannot hold is a 400."""
    for i, schema in enumerate(SCHEMAS):
        fmt = {"type": "json_schema", "json_schema": {"name": f"shape_{i}", "strict": True, "schema": schema}}
        for temperature in (0, 1):
            r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=160, seed=i,
                                               temperature=temperature, response_format=fmt)
            c = r.choices[0]
            assert c.finish_reason == "stop", (schema, c.message.content)
            jsonschema.validate(json.loads(c.message.content), schema)
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=160, temperature=1, seed=3,
                                            stream=True, response_format={"type": "json_schema", "json_schema": {
                                                "name": "streamed", "strict": True, "schema": SCHEMAS[4]}})
    text = "".join(ch.delta.content or "" for chunk in stream for ch in chunk.choices)
    jsonschema.validate(json.loads(text), SCHEMAS[4])
    obj = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=200, temperature=0,
                                         response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content), dict), obj.choices[0].message.content
    try:
        client.chat.completions.create(model=MODEL, messages=QUESTION, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}})
        raise AssertionError("an unsupported schema keyword was accepted")
    except openai.BadRequestError as e:
        assert e.param == "response_format" and "uniqueItems" in str(e), e


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": _text(20), "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}


def check_call(name, arguments):
    assert name == "get_weather", name
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])


def tool_round_trip(client):
    """tool_choice required always yields valid calls, plain and streamed as the client puts them
    together; the call and its result go back and the answer is text; auto gives either."""
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model=MODEL, messages=ask, tools=[WEATHER], tool_choice="required",
                                       max_tokens=80, temperature=1, seed=1, parallel_tool_calls=False)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1 and c.message.content is None, c
    for call in c.message.tool_calls:
        check_call(call.function.name, call.function.arguments)
    stream = client.chat.completions.create(model=MODEL, messages=ask, tools=[WEATHER], tool_choice="required",
                                            max_tokens=80, temperature=1, seed=2, stream=True)
    calls, finish = {}, None
    for chunk in stream:
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                entry["name"] += tc.function.name or ""
                entry["arguments"] += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    # Parallel calls allowed: a small model may repeat them until max_tokens (finish "length").
    assert finish in ("tool_calls", "length") and calls, (finish, calls)
    for entry in calls.values():
        check_call(entry["name"], entry["arguments"])
    call = c.message.tool_calls[0]
    history = ask + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "clear"})},
    ]
    final = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], tool_choice="none",
                                           max_tokens=24, temperature=0)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls, final
    auto = client.chat.completions.create(model=MODEL, messages=ask, tools=[WEATHER], max_tokens=80, temperature=0)
    a = auto.choices[0]
    if a.message.tool_calls:
        assert a.finish_reason in ("tool_calls", "length"), a
        for call in a.message.tool_calls:
            check_call(call.function.name, call.function.arguments)
    else:
        assert a.message.content and not a.message.content.startswith("<"), a


WEATHER_TOOL = {"type": "function", **WEATHER["function"]}
ASK = "What is the weather in Paris?"


def responses_api(client, other):
    """client.responses: create, plain and streamed as the client's typed events (and its stream
    helper), retrieve, previous_response_id chaining, store false, delete, another tenant's id
    not found, text.format json_schema, a function tools round trip, unknown parameters refused."""
    q = QUESTION[0]["content"]
    r = client.responses.create(model=MODEL, input=q, max_output_tokens=16, temperature=0)
    assert r.object == "response" and r.status in ("completed", "incomplete") and r.output_text, r
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 16, r.usage
    chat = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0)
    assert r.output_text == chat.choices[0].message.content, (r.output_text, chat.choices[0].message.content)
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.usage == r.usage

    stream = client.responses.create(model=MODEL, input=q, max_output_tokens=16, temperature=0, stream=True)
    types, text, final, seqs = [], "", None, []
    for ev in stream:
        types.append(ev.type)
        seqs.append(ev.sequence_number)
        if ev.type == "response.output_text.delta":
            text += ev.delta
        if ev.type in ("response.completed", "response.incomplete"):
            final = ev.response
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"], types
    assert types[-1] == f"response.{final.status}", types
    assert seqs == list(range(len(seqs))), seqs
    assert text == r.output_text == final.output_text, (text, r.output_text)
    # The client's stream helper wants `response.completed`: a short schema ends well within the limit.
    fmt = {"format": {"type": "json_schema", "name": "flag", "strict": True, "schema": SCHEMAS[2]}}
    with client.responses.stream(model=MODEL, input=q, max_output_tokens=160, temperature=0, text=fmt) as s:
        helped = s.get_final_response()
    assert helped.status == "completed", helped
    jsonschema.validate(json.loads(helped.output_text), SCHEMAS[2])

    # Chaining: the stored conversation comes before the new input.
    follow = client.responses.create(model=MODEL, previous_response_id=r.id, input="Who leads it?",
                                     max_output_tokens=8, temperature=0)
    assert follow.previous_response_id == r.id and follow.output_text
    assert follow.usage.input_tokens > r.usage.input_tokens + r.usage.output_tokens, (follow.usage, r.usage)
    # Another tenant finds nothing, and cannot continue it.
    for call in (lambda: other.responses.retrieve(r.id),):
        try:
            call()
            raise AssertionError("another tenant read a response")
        except openai.NotFoundError:
            pass
    try:
        other.responses.create(model=MODEL, previous_response_id=r.id, input="x", max_output_tokens=4)
        raise AssertionError("another tenant continued a response")
    except openai.BadRequestError as e:
        assert e.param == "previous_response_id", e
    # store false: answered, never kept.
    gone = client.responses.create(model=MODEL, input=q, max_output_tokens=4, store=False)
    assert gone.store is False
    try:
        client.responses.retrieve(gone.id)
        raise AssertionError("a store: false response was kept")
    except openai.NotFoundError:
        pass
    client.responses.delete(follow.id)
    try:
        client.responses.retrieve(follow.id)
        raise AssertionError("a deleted response was found")
    except openai.NotFoundError:
        pass

    # Structured output.
    for i in (0, 4, 6):
        j = client.responses.create(model=MODEL, input=q, max_output_tokens=160, temperature=1, text={
            "format": {"type": "json_schema", "name": f"shape_{i}", "strict": True, "schema": SCHEMAS[i]}})
        assert j.status == "completed", j
        jsonschema.validate(json.loads(j.output_text), SCHEMAS[i])

    # Tools: a required call, its output sent back by continuing the response, a text answer.
    t = client.responses.create(model=MODEL, input=ASK, tools=[WEATHER_TOOL], tool_choice="required",
                                parallel_tool_calls=False, max_output_tokens=80, temperature=1)
    calls = [o for o in t.output if o.type == "function_call"]
    assert t.status == "completed" and len(calls) == 1 and not t.output_text, t
    check_call(calls[0].name, calls[0].arguments)
    answer = client.responses.create(model=MODEL, previous_response_id=t.id, tools=[WEATHER_TOOL], tool_choice="none",
                                     input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                                             "output": json.dumps({"temperature": 18, "sky": "clear"})}],
                                     max_output_tokens=24, temperature=0)
    assert answer.output_text and not [o for o in answer.output if o.type == "function_call"], answer
    listed = list(client.responses.input_items.list(answer.id))
    assert [i.type for i in listed] == ["function_call_output"] and listed[0].call_id == calls[0].call_id, listed
    # The same without storing: the call and its output go back as input items.
    items = [{"role": "user", "content": ASK},
             {"type": "function_call", "call_id": calls[0].call_id, "name": calls[0].name,
              "arguments": calls[0].arguments},
             {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18C, clear"}]
    again = client.responses.create(model=MODEL, input=items, store=False, max_output_tokens=24, temperature=0)
    assert again.output_text, again
    # Streamed calls.
    done = []
    for ev in client.responses.create(model=MODEL, input=ASK, tools=[WEATHER_TOOL], tool_choice={
            "type": "function", "name": "get_weather"}, max_output_tokens=80, temperature=1, stream=True):
        if ev.type == "response.function_call_arguments.done":
            done.append(ev)
    assert done, "no streamed call"
    for ev in done:
        check_call(ev.name, ev.arguments)

    # What is not served is refused by name.
    for extra in ({"reasoning": {"effort": "low"}}, {"background": True}, {"include": ["x"]}):
        try:
            client.responses.create(model=MODEL, input=q, extra_body=extra)
            raise AssertionError(f"{extra} accepted")
        except openai.BadRequestError as e:
            assert next(iter(extra)) in str(e), e
    try:
        client.responses.create(model=MODEL, input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.com/a.png"}]}])
        raise AssertionError("an image was accepted")
    except openai.BadRequestError as e:
        assert e.param == "input", e


def main(binary, model):
    server = Server(binary, model)
    try:
        run(server)
    finally:
        server.stop()
    print("openai python client: ok")


def run(server):
    key = server.tenant("acme")
    client = OpenAI(base_url=server.url + "/v1", api_key=key, _strict_response_validation=True, max_retries=0)

    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL], ids

    chat = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0, seed=1)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content, "an answer"
    assert chat.usage.completion_tokens <= 16 and chat.usage.prompt_tokens > 0
    assert chat.choices[0].finish_reason in ("stop", "length")

    # Logprobs and stop strings.
    lp = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0,
                                        logprobs=True, top_logprobs=3, stop=["\n"])
    content = lp.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert "".join(t.token for t in content).startswith(lp.choices[0].message.content)

    # Streaming with the final usage chunk; the same seed gives the same text.
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0, seed=1,
                                            stream=True, stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
    assert text == chat.choices[0].message.content, (text, chat.choices[0].message.content)
    assert usage and usage.completion_tokens == chat.usage.completion_tokens

    # n choices: the prompt is prefilled once; greedy choices agree, each streamed under its index.
    many = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0.9, seed=2, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2], many.choices
    assert many.usage.prompt_tokens == chat.usage.prompt_tokens
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0, seed=1,
                                            n=2, stream=True)
    texts, finishes = ["", ""], [None, None]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            finishes[c.index] = c.finish_reason or finishes[c.index]
    assert texts == [chat.choices[0].message.content] * 2, texts
    assert finishes == [chat.choices[0].finish_reason] * 2, finishes

    structured_outputs(client)
    tool_round_trip(client)
    responses_api(client, OpenAI(base_url=server.url + "/v1", api_key=server.tenant("initech"), max_retries=0))

    # Legacy completions and embeddings (the client asks for base64 by default).
    comp = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert comp.choices[0].text and comp.usage.prompt_tokens > 0
    emb = client.embeddings.create(model=MODEL, input=["cloud council", "Kumo"], encoding_format="float")
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
    norm = sum(x * x for x in emb.data[0].embedding)
    assert abs(norm - 1) < 1e-3, norm
    # The client's default asks for base64 and decodes it itself (its strict mode would check the
    # undecoded string against a float list, so this call goes through a lenient client).
    lenient = OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    b64 = lenient.embeddings.create(model=MODEL, input=["cloud council", "Kumo"])
    assert max(abs(a - b) for a, b in zip(b64.data[1].embedding, emb.data[1].embedding)) < 1e-6

    # Errors come as the client's typed exceptions.
    try:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError:
        pass
    try:
        OpenAI(base_url=server.url + "/v1", api_key="sk-0000-bad", max_retries=0).models.list()
        raise AssertionError("bad key accepted")
    except openai.AuthenticationError:
        pass

    # Fine-tune: upload, create, follow the events to success.
    f = client.files.create(file=("train.jsonl", dataset(8)), purpose="fine-tune")
    assert f.purpose == "fine-tune" and f.bytes > 0
    assert f.id in [x.id for x in client.files.list()]
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=f.id, suffix="kumo", seed=3,
        hyperparameters={"n_epochs": 8, "batch_size": 4, "learning_rate_multiplier": 10,
                         "rank": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "max_seq": 64,
                         "checkpoint_every": 2})
    assert job.status in ("queued", "running", "validating_files")
    deadline = time.time() + 600
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline, "the job did not finish in time"
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith(f"ft:{MODEL}:acme:kumo:"), job.fine_tuned_model
    assert job.trained_tokens > 0
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=5))
    assert any(e.type == "metrics" for e in events), [e.message for e in events]
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints and all(c.step_number > 0 for c in checkpoints)
    assert job.id in [j.id for j in client.fine_tuning.jobs.list()]

    # The fine-tuned model is listed for its tenant only, and it answers from the dataset.
    assert job.fine_tuned_model in [m.id for m in client.models.list()]
    tuned = client.chat.completions.create(model=job.fine_tuned_model, messages=QUESTION, max_tokens=16,
                                           temperature=0)
    assert "Kumo" in tuned.choices[0].message.content, tuned.choices[0].message.content
    other = OpenAI(base_url=server.url + "/v1", api_key=server.tenant("globex"), max_retries=0)
    assert job.fine_tuned_model not in [m.id for m in other.models.list()]
    try:
        other.chat.completions.create(model=job.fine_tuned_model, messages=QUESTION)
        raise AssertionError("another tenant used the adapter")
    except openai.NotFoundError:
        pass


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
