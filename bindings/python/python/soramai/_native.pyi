"""Type stubs of the native module (the Rust SDK through PyO3)."""

from typing import Any, Iterator, Literal, Mapping, Sequence, TypedDict, Unpack, final

DEFAULT_MODEL_ID: str

class SoramaiError(Exception):
    """Base class of every Soramai error."""

    code: str

class AuthenticationError(SoramaiError): ...
class PermissionDeniedError(SoramaiError): ...
class NotFoundError(SoramaiError): ...
class ConflictError(SoramaiError): ...
class InvalidRequestError(SoramaiError): ...
class TooLargeError(SoramaiError): ...
class ContextLengthError(SoramaiError): ...
class InsufficientCreditsError(SoramaiError): ...
class RateLimitError(SoramaiError): ...
class UnavailableError(SoramaiError): ...
class IntegrityError(SoramaiError): ...
class InternalError(SoramaiError): ...

Scope = Literal["inference", "train", "rag", "admin"]
Tier = Literal["free", "basic", "pro", "org", "enterprise"]

class FunctionCall(TypedDict):
    name: str
    arguments: str

class ToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: FunctionCall

class ChatMessage(TypedDict, total=False):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str
    tool_calls: list[ToolCall]
    tool_call_id: str

class FunctionDef(TypedDict, total=False):
    name: str
    description: str
    parameters: dict[str, Any]
    strict: bool

class Tool(TypedDict):
    type: Literal["function"]
    function: FunctionDef

class JsonSchemaFormat(TypedDict, total=False):
    name: str
    description: str
    schema: dict[str, Any]
    strict: bool

class ResponseFormat(TypedDict, total=False):
    """type is text, json_object, json_schema (with json_schema), regex (with pattern) or lark
    (with grammar)."""
    type: Literal["text", "json_object", "json_schema", "regex", "lark"]
    json_schema: JsonSchemaFormat
    pattern: str
    grammar: str

class GenerationOptions(TypedDict, total=False):
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: list[str]
    logprobs: int
    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict[str, float]
    n: int
    response_format: ResponseFormat
    tools: list[Tool]
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any]
    parallel_tool_calls: bool

class PromptTokensDetails(TypedDict):
    cached_tokens: int

class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails

class TopLogprob(TypedDict):
    token: str
    bytes: list[int]
    logprob: float

class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]

class DeltaEvent(TypedDict):
    type: Literal["delta"]
    index: int
    text: str
    logprob: TokenLogprob | None

class DoneEvent(TypedDict):
    type: Literal["done"]
    finish_reason: Literal["stop", "length"]
    finish_reasons: list[Literal["stop", "length"]]
    usage: Usage

class Source(TypedDict):
    number: int
    chunk_id: str
    doc_id: str
    title: str

class Choice(TypedDict):
    index: int
    text: str
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: list[TokenLogprob] | None
    tool_calls: list[ToolCall]

class ToolCallsEvent(TypedDict):
    type: Literal["tool_calls"]
    index: int
    calls: list[ToolCall]

class Completion(TypedDict, total=False):
    id: str
    model: str
    text: str
    finish_reason: Literal["stop", "length", "tool_calls"]
    usage: Usage
    logprobs: list[TokenLogprob] | None
    choices: list[Choice]
    created: int
    sources: list[Source]

class Model(TypedDict):
    id: str
    created: int
    owned_by: str

class Embeddings(TypedDict):
    vectors: list[list[float]]
    prompt_tokens: int

class CustomModel(TypedDict):
    id: str
    tenant: str
    name: str
    bytes: int
    sha256: str
    architecture: str
    created_at: int

class Dataset(TypedDict):
    id: str
    name: str
    bytes: int
    examples: int
    created_at: int

class Hyperparameters(TypedDict, total=False):
    """OpenAI's three are a number or ``"auto"`` (left out: ``"auto"``, chosen from the dataset's size)."""

    n_epochs: int | Literal["auto"]
    batch_size: int | Literal["auto"]
    learning_rate_multiplier: float | Literal["auto"]
    rank: int
    alpha: float
    target_modules: list[str]
    max_seq: int
    seed: int
    checkpoint_every: int

class Job(TypedDict):
    id: str
    tenant: str
    spec: dict[str, Any]
    pool: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float
    attempts: int
    max_attempts: int
    cancel_requested: bool
    result: dict[str, Any] | None
    error: str | None
    created_at: int
    finished_at: int | None

class JobEvent(TypedDict):
    seq: int
    at: int
    kind: str
    data: dict[str, Any]

class Document(TypedDict, total=False):
    id: str
    title: str
    text: str
    format: Literal["text", "markdown", "html"]
    metadata: dict[str, str]

class Ingestion(TypedDict):
    documents: int
    chunks: int

class Hit(TypedDict):
    chunk_id: str
    doc_id: str
    title: str
    heading: str
    text: str
    snippet: str
    score: float
    similarity: float | None

class ApiKey(TypedDict):
    id: str
    tenant: str
    name: str
    scopes: list[Scope]
    pool: str | None
    created_at: int
    expires_at: int | None
    revoked_at: int | None
    replaced_by: str | None
    grant: str | None

class NewApiKey(ApiKey):
    key: str

class AccessGrant(TypedDict):
    id: str
    tenant: str
    operator_tenant: str
    operator_key: str
    key_id: str
    reason: str
    scopes: list[Scope]
    ttl_seconds: int
    status: Literal["pending", "active", "revoked", "expired"]
    requested_at: int
    approved_at: int | None
    expires_at: int
    ended_at: int | None
    ended_by: str | None

class NewAccessGrant(AccessGrant):
    key: str

class Tenant(TypedDict):
    id: str
    tier: Tier
    status: Literal["active", "locked", "deleted"]
    store: str
    key_custody: str
    created_at: int

class UsageReport(TypedDict):
    requests: int
    input_tokens: int
    output_tokens: int
    balance: int

@final
class TokenStream(Iterator[DeltaEvent | ToolCallsEvent | DoneEvent]):
    """A generation under way; iterating releases the GIL while it waits for each token."""

    @property
    def id(self) -> str | None: ...
    @property
    def sources(self) -> list[Source] | None: ...
    def __iter__(self) -> TokenStream: ...
    def __next__(self) -> DeltaEvent | ToolCallsEvent | DoneEvent: ...
    def collect(self) -> Any:
        """The :class:`Completion` (a generation) or the response dict (``create_response``)."""
    def close(self) -> None: ...

@final
class Session:
    """One API key's view of the platform."""

    @property
    def tenant(self) -> str: ...
    def models(self) -> list[Model]: ...
    def chat(
        self,
        model: str,
        messages: Sequence[ChatMessage] | Sequence[Mapping[str, str]],
        *,
        stream: bool = False,
        **options: Unpack[GenerationOptions],
    ) -> Any:
        """A :class:`Completion`, or with ``stream=True`` a :class:`TokenStream`."""
    def complete(
        self,
        model: str,
        prompt: str,
        *,
        stream: bool = False,
        **options: Unpack[GenerationOptions],
    ) -> Any:
        """A :class:`Completion`, or with ``stream=True`` a :class:`TokenStream`."""
    def embed(self, model: str, inputs: Sequence[str]) -> Embeddings: ...
    def create_response(self, request: Mapping[str, Any], *, stream: bool = False) -> Any:
        """OpenAI's Responses API (``request`` as ``POST /v1/responses`` takes it, less ``stream``):
        the response dict, or with ``stream=True`` a :class:`TokenStream` of its typed events."""
    def response(self, id: str) -> dict[str, Any]:
        """A stored response of the tenant's."""
    def response_input_items(self, id: str) -> list[dict[str, Any]]:
        """A stored response's input items, in the order given."""
    def delete_response(self, id: str) -> None: ...
    def upload_model(self, name: str, path: str) -> CustomModel:
        """Uploads the tenant's own GGUF (Pro and up) from a file, streamed; its ``id`` names it."""
    def custom_models(self) -> list[CustomModel]: ...
    def delete_model(self, id: str) -> None: ...
    def upload_dataset(self, name: str, data: bytes) -> Dataset: ...
    def datasets(self) -> list[Dataset]: ...
    def dataset(self, id: str) -> Dataset: ...
    def download_dataset(self, id: str) -> bytes: ...
    def delete_dataset(self, id: str) -> None: ...
    def create_fine_tuning_job(
        self, training_file: str, model: str, *, suffix: str | None = None, hyperparameters: Hyperparameters | None = None
    ) -> Job: ...
    def fine_tuning_jobs(self) -> list[Job]: ...
    def fine_tuning_job(self, id: str) -> Job: ...
    def fine_tuning_job_events(self, id: str) -> list[JobEvent]: ...
    def cancel_fine_tuning_job(self, id: str) -> Job: ...
    def wait_fine_tuning_job(self, id: str, *, timeout: float = 600.0) -> Job: ...
    def create_corpus(self, id: str) -> None: ...
    def corpora(self) -> list[str]: ...
    def delete_corpus(self, id: str) -> None: ...
    def add_documents(self, corpus: str, documents: Sequence[Document]) -> Ingestion: ...
    def start_ingestion(self, corpus: str, documents: Sequence[Document]) -> Job: ...
    def ingestion(self, corpus: str, id: str) -> Job: ...
    def ingestions(self, corpus: str) -> list[Job]: ...
    def cancel_ingestion(self, corpus: str, id: str) -> Job: ...
    def wait_ingestion(self, corpus: str, id: str, *, timeout: float = 600.0) -> Job: ...
    def documents(self, corpus: str) -> list[str]: ...
    def delete_document(self, corpus: str, id: str) -> None: ...
    def search(
        self, corpus: str, query: str, *, top_k: int = 5, filters: Mapping[str, str] | None = None, hybrid: bool = False
    ) -> list[Hit]: ...
    def grounded_chat(
        self,
        model: str,
        corpus: str,
        question: str,
        *,
        top_k: int = 5,
        hybrid: bool = False,
        cite: bool = False,
        stream: bool = False,
        **options: Unpack[GenerationOptions],
    ) -> Any:
        """A :class:`Completion` with ``sources``, or with ``stream=True`` a :class:`TokenStream`
        whose ``sources`` resolve the answer's ``[n]`` citations. ``cite`` holds the answer to
        citing: it begins with ``[n]`` markers that name sources."""
    def create_api_key(
        self, name: str, scopes: Sequence[Scope], *, tenant: str | None = None, expires_in_seconds: int | None = None
    ) -> NewApiKey: ...
    def api_keys(self) -> list[ApiKey]: ...
    def revoke_api_key(self, id: str) -> None: ...
    def rotate_api_key(self, id: str, *, grace_seconds: int = 0) -> NewApiKey: ...
    def create_tenant(self, id: str, tier: Tier = "basic") -> Tenant: ...
    def set_tier(self, id: str, tier: Tier) -> Tenant: ...
    def tenants(self) -> list[Tenant]: ...
    def grant_credits(self, tenant: str, amount: int, reference: str) -> dict[str, Any]: ...
    def close_tenant(self, id: str, *, immediate: bool = False, window_days: int | None = None) -> dict[str, Any]:
        """Access ends now; the data goes after ``window_days`` (1-30, default 30) or now."""
    def reopen_tenant(self, id: str) -> None: ...
    def request_access_grant(
        self, tenant: str, reason: str, scopes: Sequence[Scope], *, ttl_seconds: int | None = None
    ) -> NewAccessGrant:
        """Break-glass access to a tenant (platform admin): active at once (Free, Basic, Pro),
        pending the tenant's approval (Org), refused where the customer holds the keys."""
    def approve_access_grant(self, id: str) -> AccessGrant: ...
    def revoke_access_grant(self, id: str) -> AccessGrant: ...
    def access_grants(self) -> list[AccessGrant]: ...
    def audit_log(self) -> list[dict[str, Any]]: ...
    def verify_audit(self) -> dict[str, Any]: ...
    def usage(self, since_ms: int = 0) -> UsageReport: ...

class Platform:
    def __new__(
        cls,
        data_dir: str,
        *,
        runner: list[str],
        model: str | None = None,
        model_id: str | None = None,
        workers: int | None = None,
        max_batch: int | None = None,
        database: str | None = None,
        blob_store: str | None = None,
        max_model_bytes: int | None = None,
        prefill_chunk: int | None = None,
        prefix_cache_bytes: int | None = None,
    ) -> Platform: ...
    def bootstrap(self) -> str | None: ...
    def session(self, api_key: str) -> Session: ...
    def close(self) -> None: ...

def job_runner(args: list[str]) -> int: ...
