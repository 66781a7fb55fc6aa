"""The tenant / dataset / fine-tune / chat / RAG flow through the Python bindings, with the
hostile cases: wrong keys, missing scopes, another tenant's resources, malformed arguments."""

from __future__ import annotations

import json
import os
import pathlib
import threading
import time

import pytest

import soramai

REPO = pathlib.Path(__file__).resolve().parents[3]
DATASET = (REPO / "soramai-server" / "assets" / "quickstart.jsonl").read_bytes()
CANARY = "CANARY-7f3a-python-binding-never-on-disk"


def model_path() -> str:
    path = os.environ.get("SORAMAI_TEST_MODEL", "")
    if not path or not os.path.exists(path):
        if os.environ.get("SORAMAI_REQUIRE_MODEL") == "1":
            pytest.fail("SORAMAI_TEST_MODEL does not name the reference model")
        pytest.skip("the reference model is not here (scripts/fetch-model.sh)")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("platform")
    platform = soramai.Platform(data, model=model_path(), workers=1)
    admin_key = platform.bootstrap()
    assert admin_key and admin_key.startswith("sk-")
    assert platform.bootstrap() is None, "the bootstrap key is shown once"
    admin = platform.session(admin_key)
    sessions = {}
    for tenant, tier in (("acme", "basic"), ("globex", "basic"), ("tiny", "free")):
        admin.create_tenant(tenant, tier)
        admin.grant_credits(tenant, 2_000_000, f"{tenant}-trial")
        key = admin.create_api_key("app", ["inference", "train", "rag", "admin"], tenant=tenant)
        assert key["key"].startswith("sk-") and key["tenant"] == tenant
        sessions[tenant] = platform.session(key["key"])
    yield {"platform": platform, "admin": admin, "data": data, **sessions}
    platform.close()


@pytest.fixture(scope="module")
def tuned(world) -> str:
    """acme's fine-tuned model id, trained through a job in a child process."""
    acme = world["acme"]
    ds = acme.upload_dataset("support.jsonl", DATASET)
    assert ds["name"] == "support.jsonl"
    job = acme.create_fine_tuning_job(
        ds["id"],
        soramai.DEFAULT_MODEL_ID,
        suffix="support",
        hyperparameters={"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 10.0, "rank": 4, "max_seq": 96},
    )
    assert job["state"] == "queued"
    done = acme.wait_fine_tuning_job(job["id"], timeout=600)
    assert done["state"] == "succeeded", done["error"]
    kinds = {e["kind"] for e in acme.fine_tuning_job_events(job["id"])}
    assert "progress" in kinds or "metric" in kinds, kinds
    return done["result"]["fine_tuned_model"]


def test_fine_tuned_model_is_the_tenants_own(world, tuned):
    acme, globex = world["acme"], world["globex"]
    assert tuned.startswith("ft:")
    assert tuned in [m["id"] for m in acme.models()]
    assert tuned not in [m["id"] for m in globex.models()]
    with pytest.raises(soramai.NotFoundError) as e:
        globex.chat(tuned, [{"role": "user", "content": "hi"}], max_tokens=4)
    assert e.value.code == "model_not_found"


def test_a_pro_tenants_job_runs_on_its_dedicated_pool(world):
    admin, platform = world["admin"], world["platform"]
    admin.create_tenant("initech", "pro")
    admin.grant_credits("initech", 1_000_000, "initech-trial")
    initech = platform.session(admin.create_api_key("app", ["train"], tenant="initech")["key"])
    ds = initech.upload_dataset("support.jsonl", DATASET)
    job = initech.create_fine_tuning_job(ds["id"], soramai.DEFAULT_MODEL_ID, hyperparameters={"n_epochs": 1, "rank": 2, "max_seq": 64})
    assert job["pool"] == "dedicated:initech"
    done = initech.wait_fine_tuning_job(job["id"], timeout=600)
    assert done["state"] == "succeeded", done["error"]


def test_chat_plain_and_streaming_agree(world, tuned):
    acme = world["acme"]
    messages = [{"role": "user", "content": "How do I rotate an API key?"}]
    whole = acme.chat(tuned, messages, max_tokens=24, seed=11, temperature=0.7)
    assert whole["text"] and whole["usage"]["completion_tokens"] <= 24
    assert whole["finish_reason"] in ("stop", "length")
    stream = acme.chat(tuned, messages, max_tokens=24, seed=11, temperature=0.7, stream=True)
    assert isinstance(stream, soramai.TokenStream) and stream.id.startswith("chatcmpl-")
    events = list(stream)
    assert events[-1]["type"] == "done"
    usage = events[-1]["usage"]
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert {k: usage[k] for k in counts} == {k: whole["usage"][k] for k in counts}
    # The same prompt again starts from the tenant's prefix cache: all but its last token.
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1
    assert "".join(e["text"] for e in events if e["type"] == "delta") == whole["text"]
    assert list(stream) == [], "an ended stream stays ended"


def test_completion_logprobs_and_embeddings(world):
    acme = world["acme"]
    c = acme.complete(soramai.DEFAULT_MODEL_ID, "The capital of France is", max_tokens=3, temperature=0, logprobs=2)
    assert len(c["logprobs"]) == c["usage"]["completion_tokens"]
    assert all(len(lp["top_logprobs"]) == 2 for lp in c["logprobs"])
    e = acme.embed(soramai.DEFAULT_MODEL_ID, ["a cat", "a kitten"])
    assert len(e["vectors"]) == 2 and e["prompt_tokens"] > 0
    assert abs(sum(x * x for x in e["vectors"][0]) - 1.0) < 1e-3


def test_sampling_penalties_and_logit_bias(world):
    acme = world["acme"]
    # The server's HTTP test checks their effect token by token; here the options cross the binding.
    taken = acme.complete(
        soramai.DEFAULT_MODEL_ID,
        "The",
        max_tokens=2,
        temperature=0,
        presence_penalty=1.0,
        frequency_penalty=0.5,
        logit_bias={str(i): -100 for i in range(1024)},
    )
    assert taken["usage"]["completion_tokens"] >= 1
    for bad in ({"presence_penalty": 3}, {"logit_bias": {"1": 101}}, {"logit_bias": {"99999999": 1}}):
        with pytest.raises(soramai.InvalidRequestError):
            acme.complete(soramai.DEFAULT_MODEL_ID, "The", max_tokens=1, **bad)


def test_n_choices_share_the_prompt(world):
    acme = world["acme"]
    c = acme.complete(soramai.DEFAULT_MODEL_ID, "Once upon a time", max_tokens=6, temperature=1.0, seed=3, n=3)
    assert [ch["index"] for ch in c["choices"]] == [0, 1, 2]
    assert c["text"] == c["choices"][0]["text"]
    assert len({ch["text"] for ch in c["choices"]}) > 1, "each choice samples with its own seed"
    events = list(acme.complete(soramai.DEFAULT_MODEL_ID, "Once upon a time", stream=True, max_tokens=4, n=2))
    assert {e["index"] for e in events if e["type"] == "delta"} == {0, 1}
    assert len(events[-1]["finish_reasons"]) == 2
    for bad in (0, 17):
        with pytest.raises(soramai.InvalidRequestError):
            acme.complete(soramai.DEFAULT_MODEL_ID, "The", max_tokens=1, n=bad)


def test_response_format_holds_the_output(world):
    acme = world["acme"]
    year = acme.complete(soramai.DEFAULT_MODEL_ID, "The year is", max_tokens=8, temperature=1.0, seed=2,
                         response_format={"type": "regex", "pattern": " [12][0-9]{3}"})
    assert len(year["text"]) == 5 and year["text"][1:].isdigit(), year["text"]
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    c = acme.chat(soramai.DEFAULT_MODEL_ID, [{"role": "user", "content": "Are you ok?"}], max_tokens=16,
                  response_format={"type": "json_schema", "json_schema": {"name": "ok", "schema": schema}})
    assert isinstance(json.loads(c["text"])["ok"], bool), c["text"]
    with pytest.raises(soramai.InvalidRequestError):
        acme.complete(soramai.DEFAULT_MODEL_ID, "The", response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "array", "uniqueItems": True}}})


def test_tools_are_called_with_valid_arguments(world):
    acme = world["acme"]
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
        "additionalProperties": False}}}
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    c = acme.chat(soramai.DEFAULT_MODEL_ID, ask, max_tokens=60, tools=[weather], tool_choice="required", seed=1,
                  parallel_tool_calls=False)
    assert c["finish_reason"] == "tool_calls" and c["text"] == "", c
    call = c["choices"][0]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    history = ask + [{"role": "assistant", "content": "", "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]
    answer = acme.chat(soramai.DEFAULT_MODEL_ID, history, max_tokens=8, temperature=0, tools=[weather],
                       tool_choice="none")
    assert answer["text"], answer
    with pytest.raises(soramai.InvalidRequestError):
        acme.chat(soramai.DEFAULT_MODEL_ID, ask, tools=[weather], tool_choice={"type": "function",
                                                                               "function": {"name": "nope"}})


def test_responses_are_stored_chained_and_the_tenants_own(world):
    acme, globex = world["acme"], world["globex"]
    r = acme.create_response({"model": soramai.DEFAULT_MODEL_ID, "input": "Say hi.", "max_output_tokens": 6,
                              "temperature": 0})
    assert r["object"] == "response" and r["output"][0]["type"] == "message", r
    text = r["output"][0]["content"][0]["text"]
    events = list(acme.create_response({"model": soramai.DEFAULT_MODEL_ID, "input": "Say hi.",
                                        "max_output_tokens": 6, "temperature": 0}, stream=True))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == text
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    assert acme.response(r["id"])["output"] == r["output"]
    assert [i["content"][0]["text"] for i in acme.response_input_items(r["id"])] == ["Say hi."]
    nxt = acme.create_response({"model": soramai.DEFAULT_MODEL_ID, "input": "Again.", "max_output_tokens": 2,
                                "previous_response_id": r["id"]})
    assert nxt["usage"]["input_tokens"] > r["usage"]["total_tokens"]
    with pytest.raises(soramai.NotFoundError):
        globex.response(r["id"])
    with pytest.raises(soramai.InvalidRequestError):
        globex.create_response({"model": soramai.DEFAULT_MODEL_ID, "input": "x", "previous_response_id": r["id"]})
    with pytest.raises(soramai.InvalidRequestError):
        acme.create_response({"model": soramai.DEFAULT_MODEL_ID, "input": "x", "reasoning": {"effort": "low"}})
    acme.delete_response(r["id"])
    with pytest.raises(soramai.NotFoundError):
        acme.response(r["id"])


def test_blocking_calls_release_the_gil(world):
    acme = world["acme"]
    ticks = 0
    done = threading.Event()

    def count():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    started = time.monotonic()
    acme.complete(soramai.DEFAULT_MODEL_ID, "Once upon a time", max_tokens=24, temperature=0)
    elapsed = time.monotonic() - started
    done.set()
    t.join()
    # With the GIL held the counter could not run at all during the call.
    assert ticks >= min(20, int(elapsed * 100)), (ticks, elapsed)


def test_rag_and_grounded_chat(world):
    acme, globex, tiny = world["acme"], world["globex"], world["tiny"]
    acme.create_corpus("handbook")
    report = acme.add_documents(
        "handbook",
        [
            {"id": "keys", "title": "API keys", "text": "Rotate an API key with rotate; the old key works for the grace period."},
            {"id": "billing", "title": "Billing", "text": "Credits are charged per token, prompt and completion alike.", "format": "markdown"},
        ],
    )
    assert report["documents"] == 2 and report["chunks"] >= 2
    assert sorted(acme.documents("handbook")) == ["billing", "keys"]
    # The same as a job: queued at once, embedded and indexed by a worker's child process.
    job = acme.start_ingestion("handbook", [{"id": "leave", "text": "Everyone gets thirty days of paid leave."}])
    assert job["state"] in ("queued", "running") and job["spec"]["kind"] == "ingest"
    done = acme.wait_ingestion("handbook", job["id"], timeout=300)
    assert done["state"] == "succeeded" and done["result"]["chunks"] >= 1, done
    assert [j["id"] for j in acme.ingestions("handbook")] == [job["id"]]
    with pytest.raises(soramai.NotFoundError):
        globex.ingestion("handbook", job["id"])
    with pytest.raises(soramai.ConflictError):
        acme.cancel_ingestion("handbook", job["id"])
    assert sorted(acme.documents("handbook")) == ["billing", "keys", "leave"]
    hits = acme.search("handbook", "rotate key", top_k=2)
    assert hits and hits[0]["doc_id"] == "keys"
    answer = acme.grounded_chat(soramai.DEFAULT_MODEL_ID, "handbook", "How do I rotate a key?", max_tokens=16, seed=1)
    assert answer["text"] and answer["sources"] and answer["sources"][0]["doc_id"] in ("keys", "billing")
    stream = acme.grounded_chat(soramai.DEFAULT_MODEL_ID, "handbook", "How are credits charged?", max_tokens=8, stream=True)
    assert stream.sources and list(stream)[-1]["type"] == "done"
    # Another tenant cannot see the corpus; the free tier has no RAG.
    with pytest.raises(soramai.NotFoundError):
        globex.search("handbook", "rotate")
    assert globex.corpora() == []
    with pytest.raises(soramai.PermissionDeniedError):
        tiny.create_corpus("notes")


def test_keys_scopes_and_isolation(world):
    platform, acme, globex = world["platform"], world["acme"], world["globex"]
    reader = acme.create_api_key("reader", ["inference"])
    limited = platform.session(reader["key"])
    with pytest.raises(soramai.PermissionDeniedError) as e:
        limited.upload_dataset("x.jsonl", DATASET)
    assert e.value.code == "permission_denied"
    with pytest.raises(soramai.PermissionDeniedError):
        acme.create_tenant("intruder")
    ds = acme.upload_dataset("private.jsonl", DATASET)
    with pytest.raises(soramai.NotFoundError):
        globex.download_dataset(ds["id"])
    assert acme.download_dataset(ds["id"]) == DATASET
    acme.revoke_api_key(reader["id"])
    with pytest.raises(soramai.AuthenticationError):
        platform.session(reader["key"])
    with pytest.raises(soramai.AuthenticationError):
        platform.session("sk-not-a-key")
    rotated = acme.rotate_api_key(acme.create_api_key("temp", ["inference"])["id"])
    assert platform.session(rotated["key"]).tenant == "acme"
    assert all("key" not in k for k in acme.api_keys()), "listed keys never hold secrets"


def test_operator_access_only_through_a_grant(world):
    platform, admin, acme = world["platform"], world["admin"], world["acme"]
    ds = acme.upload_dataset("ops.jsonl", DATASET)
    # No second operator key for a tenant that has one; no read of its data.
    with pytest.raises(soramai.PermissionDeniedError):
        admin.create_api_key("peek", ["train"], tenant="acme")
    with pytest.raises(soramai.NotFoundError):
        admin.download_dataset(ds["id"])
    for bad in [
        lambda: admin.request_access_grant("acme", "", ["train"]),
        lambda: admin.request_access_grant("acme", "INC-1", ["train"], ttl_seconds=3601),
        lambda: admin.request_access_grant("acme", "INC-1", ["sudo"]),
    ]:
        with pytest.raises(soramai.InvalidRequestError):
            bad()
    with pytest.raises(soramai.PermissionDeniedError):
        acme.request_access_grant("globex", "INC-1", ["train"])
    grant = admin.request_access_grant("acme", "INC-3 stuck upload", ["train"], ttl_seconds=300)
    assert grant["status"] == "active" and grant["key"].startswith("sk-")
    peek = platform.session(grant["key"])
    assert peek.download_dataset(ds["id"]) == DATASET
    listed = acme.access_grants()
    assert [g["id"] for g in listed] == [grant["id"]] and listed[0]["reason"] == "INC-3 stuck upload"
    assert acme.revoke_access_grant(grant["id"])["status"] == "revoked"
    with pytest.raises(soramai.AuthenticationError):
        peek.download_dataset(ds["id"])  # the session stops with its grant
    assert acme.verify_audit()["records"] > 0


def test_accounts_close(world):
    platform, admin = world["platform"], world["admin"]
    admin.create_tenant("leaving", "basic")
    key = admin.create_api_key("app", ["admin"], tenant="leaving")["key"]
    leaving = platform.session(key)
    with pytest.raises(soramai.InvalidRequestError):
        leaving.close_tenant("leaving", window_days=31)
    closure = leaving.close_tenant("leaving", window_days=3)
    assert closure["purge_at"] - closure["requested_at"] == 3 * 86_400_000 and not closure["purged"]
    with pytest.raises(soramai.AuthenticationError):
        platform.session(key)
    admin.reopen_tenant("leaving")
    assert admin.close_tenant("leaving", immediate=True)["purged"]
    assert "leaving" not in [t["id"] for t in admin.tenants()]


def test_malformed_arguments_are_typed_errors_and_change_nothing(world):
    acme = world["acme"]
    before = acme.usage()
    bad_calls = [
        lambda: acme.chat(soramai.DEFAULT_MODEL_ID, [{"role": "wizard", "content": "hi"}]),
        lambda: acme.chat(soramai.DEFAULT_MODEL_ID, [{"content": "no role"}]),
        lambda: acme.chat(soramai.DEFAULT_MODEL_ID, "not a list"),
        lambda: acme.chat(soramai.DEFAULT_MODEL_ID, [], max_tokens=4),
        lambda: acme.chat(soramai.DEFAULT_MODEL_ID, [{"role": "user", "content": "hi"}], temperature=9),
        lambda: acme.chat(soramai.DEFAULT_MODEL_ID, [{"role": "user", "content": "hi"}], bogus=1),
        lambda: acme.chat(soramai.DEFAULT_MODEL_ID, [{"role": "user", "content": "hi"}], max_tokens=-1),
        lambda: acme.chat(soramai.DEFAULT_MODEL_ID, [{"role": "user", "content": object()}]),
        lambda: acme.complete(soramai.DEFAULT_MODEL_ID, "x" * 50_000),
        lambda: acme.create_fine_tuning_job("ds-unknown", soramai.DEFAULT_MODEL_ID, hyperparameters={"rank": 0}),
        lambda: acme.create_fine_tuning_job("../../etc/passwd", soramai.DEFAULT_MODEL_ID),
        lambda: acme.add_documents("handbook", [{"id": "x"}]),
        lambda: acme.upload_dataset("bad.jsonl", b"\xff\xfe not json"),
        lambda: acme.create_tenant("x", "platinum"),
        lambda: acme.search("handbook", "q", top_k="many"),
    ]
    for call in bad_calls:
        with pytest.raises(soramai.SoramaiError) as e:
            call()
        assert not isinstance(e.value, soramai.InternalError), e.value
        assert e.value.code and str(e.value)
    after = acme.usage()
    assert after["balance"] == before["balance"], "a refused request costs nothing"


def test_bad_storage_urls_are_typed_errors(tmp_path):
    for kwargs in [
        {"database": "mysql://root@localhost/db"},
        {"blob_store": "ftp://example.invalid/bucket"},
        {"blob_store": "file://relative/path"},
    ]:
        with pytest.raises(soramai.InvalidRequestError):
            soramai.Platform(tmp_path / "node", **kwargs)
    assert not (tmp_path / "node" / "meta.sqlite3").exists()


def test_canary_prompt_never_reaches_disk(world):
    acme, data = world["acme"], world["data"]
    acme.chat(soramai.DEFAULT_MODEL_ID, [{"role": "user", "content": f"Remember {CANARY}"}], max_tokens=4)
    acme.complete(soramai.DEFAULT_MODEL_ID, f"{CANARY} says", max_tokens=4)
    acme.create_response({"model": soramai.DEFAULT_MODEL_ID, "input": f"Remember {CANARY}", "max_output_tokens": 4})
    needle = CANARY.encode()
    for path in pathlib.Path(data).rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), f"the canary is in {path}"


def test_usage_and_audit(world):
    acme = world["acme"]
    usage = acme.usage()
    assert usage["balance"] < 2_000_000
    report = acme.verify_audit()
    assert report["records"] > 0
    # Below Org the log shows the operator's access only (its changes, its grants and their use).
    view = acme.audit_log()
    assert {"tenant.created", "access_grant.requested", "access_grant.request"} <= {r["action"] for r in view}
    assert all(r["actor"].startswith("operator") or r["action"].startswith("access_grant.") for r in view)
    world["admin"].set_tier("acme", "org")
    actions = {r["action"] for r in acme.audit_log()}
    assert {"dataset.uploaded", "api_key.created", "job.finished", "corpus.created"} <= actions, actions
