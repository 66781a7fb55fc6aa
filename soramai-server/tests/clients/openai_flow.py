"""The official `openai` Python client, with strict response validation, against `soramai serve`:
list models, chat (plain and streaming), upload a dataset, fine-tune, follow the job's events to
success, chat with the `ft:` model. Usage: openai_flow.py SORAMAI_BINARY MODEL.gguf"""
import sys
import time

import openai
from openai import OpenAI

from common import Server, dataset

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "Where does the cloud council meet?"}]


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
