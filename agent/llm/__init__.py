"""One small LLM interface and its providers.

    LLMBackend.generate(LLMRequest[T]) -> LLMResult[T]     (parsed pydantic object + Usage + model)

Providers are looked up in PROVIDERS by name (`make_llm("anthropic", model=..., base_url=...)`);
a new provider is one module with a ProviderBackend subclass (its key variable, default model and
prices are class attributes) and one `register_provider` call here, naming its batch API class
(agent/llm/batch_api.py) or None.
The offline `baseline` labeler is no LLM and lives in agent/baseline.py; agent/backends.py puts
the three user-facing backends (anthropic, openai, baseline) behind one registry.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from agent.llm.anthropic_backend import AnthropicBackend
from agent.llm.base import (
    LLMError,
    LLMRequest,
    LLMResult,
    MalformedOutputError,
    Message,
    ProviderBackend,
    ProviderError,
    RawReply,
    RetryPolicy,
    Usage,
    parse_output,
    parse_retry_after,
    strict_schema,
)
from agent.llm.batch_api import AnthropicBatches, BatchAPI, BatchState, LineResult, OpenAIBatches
from agent.llm.openai_backend import OpenAIBackend
from storage.errors import InputError

T = TypeVar("T", bound=BaseModel)


class LLMBackend(Protocol):
    """What explain and simulate need from an LLM."""

    name: str
    model: str

    async def generate(self, request: LLMRequest[T]) -> LLMResult[T]: ...

    async def aclose(self) -> None: ...


PROVIDERS: dict[str, type[ProviderBackend]] = {}
BATCH_APIS: dict[str, type[BatchAPI]] = {}


def register_provider(
    cls: type[ProviderBackend], batch: type[BatchAPI] | None = None
) -> type[ProviderBackend]:
    """Add a provider; `batch`: its batch API (None: `--batch` is refused for it)."""
    if cls.name in PROVIDERS:
        raise ValueError(f"an LLM provider named {cls.name!r} is already registered")
    PROVIDERS[cls.name] = cls
    if batch is not None:
        BATCH_APIS[cls.name] = batch
    return cls


register_provider(AnthropicBackend, AnthropicBatches)
register_provider(OpenAIBackend, OpenAIBatches)


def batch_api(llm: ProviderBackend) -> BatchAPI:
    """The batch API of `llm`'s provider; InputError when it has none."""
    try:
        cls = BATCH_APIS[llm.name]
    except KeyError:
        raise InputError(f"--batch needs a provider with a batch API ({', '.join(BATCH_APIS)}); "
                         f"{llm.name!r} has none.") from None
    return cls(llm)


def make_llm(name: str, *, model: str | None = None, **options: Any) -> ProviderBackend:
    """Build a provider by name. Raises InputError for an unknown name, ConfigError for a missing key."""
    try:
        cls = PROVIDERS[name]
    except KeyError:
        raise InputError(f"unknown LLM provider {name!r}; known: {', '.join(sorted(PROVIDERS))}.") from None
    return cls(model, **options)


__all__ = [
    "BATCH_APIS",
    "PROVIDERS",
    "BatchAPI",
    "BatchState",
    "LineResult",
    "batch_api",
    "AnthropicBackend",
    "LLMBackend",
    "LLMError",
    "LLMRequest",
    "LLMResult",
    "MalformedOutputError",
    "Message",
    "OpenAIBackend",
    "ProviderBackend",
    "ProviderError",
    "RawReply",
    "RetryPolicy",
    "Usage",
    "make_llm",
    "parse_output",
    "parse_retry_after",
    "register_provider",
    "strict_schema",
]
