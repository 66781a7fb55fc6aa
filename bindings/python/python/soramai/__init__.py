"""Soramai: a private fine-tune-and-serve platform, embedded.

Tenants, scoped API keys, datasets encrypted under each tenant's key, QLoRA fine-tuning jobs on a
quantized GGUF base, chat with any tenant's adapter (many tenants batched into one forward pass),
retrieval-grounded answers, usage metering and a tamper-evident audit log.

    import soramai
    platform = soramai.Platform("data", model="SmolLM2-135M-Instruct.Q4_1.gguf")
    admin = platform.session(platform.bootstrap())
    admin.create_tenant("acme", "basic")
    admin.grant_credits("acme", 1_000_000, "trial")
    acme = platform.session(admin.create_api_key("app", ["inference", "train", "rag", "admin"], tenant="acme")["key"])
    print(acme.chat("smollm2", [{"role": "user", "content": "Hello!"}], max_tokens=16)["text"])

Every call that reaches storage or the engine releases the GIL; results are plain dicts and lists.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from . import _native
from ._native import (
    DEFAULT_MODEL_ID,
    AuthenticationError,
    ConflictError,
    ContextLengthError,
    InsufficientCreditsError,
    IntegrityError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    Session,
    SoramaiError,
    TokenStream,
    TooLargeError,
    UnavailableError,
)

__all__ = [
    "DEFAULT_MODEL_ID",
    "AuthenticationError",
    "ConflictError",
    "ContextLengthError",
    "InsufficientCreditsError",
    "IntegrityError",
    "InternalError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "Platform",
    "RateLimitError",
    "Session",
    "SoramaiError",
    "TokenStream",
    "TooLargeError",
    "UnavailableError",
    "default_runner",
]


def default_runner() -> list[str]:
    """The job runner command: this interpreter running the package's own runner script.

    Jobs run in child processes with an empty environment, so the script finds the package by its
    own path rather than through PYTHONPATH."""
    return [sys.executable, "-s", os.path.join(os.path.dirname(os.path.abspath(__file__)), "_jobrunner.py"), "job-runner"]


class Platform(_native.Platform):
    """A platform, by default on the embedded default: SQLite and encrypted local blobs in
    ``data_dir``.

    ``model`` (a GGUF file) is registered as base model ``model_id`` (default ``"smollm2"``) when
    no model has that id; ``workers`` job workers run fine-tuning jobs in child processes started
    with ``runner`` (by default :func:`default_runner`). Several nodes share a ``database``
    (``"postgres://user:password@host/db"``) and a ``blob_store`` (``"file:///mnt/shared"`` or
    ``"s3://bucket"``); build the extension with ``--features postgres,s3`` for them
    (``scripts/python-bindings.sh --features wgpu,postgres,s3``)."""

    def __new__(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        model: str | os.PathLike[str] | None = None,
        model_id: str | None = None,
        workers: int | None = None,
        max_batch: int | None = None,
        runner: Sequence[str] | None = None,
        database: str | None = None,
        blob_store: str | None = None,
        max_model_bytes: int | None = None,
    ) -> "Platform":
        return super().__new__(
            cls,
            os.fspath(data_dir),
            runner=list(runner) if runner is not None else default_runner(),
            model=os.fspath(model) if model is not None else None,
            model_id=model_id,
            workers=workers,
            max_batch=max_batch,
            database=database,
            blob_store=blob_store,
            max_model_bytes=max_model_bytes,
        )

    def __enter__(self) -> "Platform":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
