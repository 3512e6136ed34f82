"""One small LLM interface and its providers.

    LLMBackend.generate(LLMRequest[T]) -> LLMResult[T]     (parsed pydantic object + Usage + model)

Providers are looked up in PROVIDERS by name (`make_llm("anthropic", model=..., base_url=...)`);
a new provider is one module with a ProviderBackend subclass and one `register_provider` call here.
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


def register_provider(cls: type[ProviderBackend]) -> type[ProviderBackend]:
    if cls.name in PROVIDERS:
        raise ValueError(f"an LLM provider named {cls.name!r} is already registered")
    PROVIDERS[cls.name] = cls
    return cls


register_provider(AnthropicBackend)
register_provider(OpenAIBackend)


def make_llm(name: str, *, model: str | None = None, **options: Any) -> ProviderBackend:
    """Build a provider by name. Raises InputError for an unknown name, ConfigError for a missing key."""
    try:
        cls = PROVIDERS[name]
    except KeyError:
        raise InputError(f"unknown LLM provider {name!r}; known: {', '.join(sorted(PROVIDERS))}.") from None
    return cls(model, **options)


__all__ = [
    "PROVIDERS",
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
