"""OpenAI Chat Completions through the openai SDK; also any OpenAI-compatible server via base_url.

Structured output by `response_format: json_schema` with `strict: true`. Reasoning models (o-series,
GPT-5 and later) take no temperature and get a reasoning allowance on top of the answer's cap.

Keys: against OpenAI itself OPENAI_API_KEY is required. With a custom base_url (vLLM, Ollama,
LM Studio...) the key is optional: OPENAI_API_KEY is sent when set, otherwise a placeholder, since
local servers usually ignore it (and the SDK refuses an empty key).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, ClassVar

from agent.llm.base import ErrorKind, LLMRequest, ProviderBackend, RawReply, Usage, status_kind, strict_schema
from agent.llm.chat import ChatReply, ChatRequest, ToolCall
from agent.llm.prices import Price, openai_price
from storage.errors import ConfigError

if TYPE_CHECKING:
    import openai

_NO_KEY_PLACEHOLDER = "no-key"
# Reasoning models accept only the default temperature, and their reasoning counts towards the cap.
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5", "gpt-6")
REASONING_ALLOWANCE = 8192


class OpenAIBackend(ProviderBackend):
    name = "openai"
    key_env = "OPENAI_API_KEY"
    # USD per million tokens, list prices as last checked (November 2026; see agent/pricing.py)
    prices: ClassVar[dict[str, Price]] = {
        "gpt-5.4": openai_price(2.5, 15.0, 0.25),
        "gpt-5.4-mini": openai_price(0.75, 4.5, 0.075),
        "gpt-5": openai_price(1.25, 10.0, 0.125),
        "gpt-5-mini": openai_price(0.25, 2.0, 0.025),
        "gpt-5-nano": openai_price(0.05, 0.4, 0.005),
        "gpt-4.1": openai_price(2.0, 8.0, 0.5),
        "gpt-4.1-mini": openai_price(0.4, 1.6, 0.1),
        "gpt-4.1-nano": openai_price(0.1, 0.4, 0.025),
        "gpt-4o": openai_price(2.5, 10.0, 1.25),
        "gpt-4o-mini": openai_price(0.15, 0.6, 0.075),
        "o4-mini": openai_price(1.1, 4.4, 0.275),
        "o3": openai_price(2.0, 8.0, 0.5),
    }
    default_model = "gpt-4.1"

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        key = os.environ.get(self.key_env)
        if not key and self.base_url is None:
            raise ConfigError(
                f"the openai backend needs an API key: set {self.key_env} "
                "(or pass --base-url for an OpenAI-compatible server that needs none)."
            )
        self.secrets = (key,) if key else ()
        import openai  # imported when used: it takes a second, and most commands never need it

        self._client: openai.AsyncOpenAI = openai.AsyncOpenAI(
            api_key=key or _NO_KEY_PLACEHOLDER, base_url=self.base_url, timeout=self.timeout_s, max_retries=0
        )

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The SDK client (the batch APIs in agent/llm/batch_api.py use it)."""
        return self._client

    def build_params(self, request: LLMRequest[Any]) -> dict[str, Any]:
        messages = [{"role": "system", "content": request.system}]
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
        params: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": request.schema_name,
                    "schema": strict_schema(request.output),
                    "strict": True,
                },
            },
        }
        return self._with_sampling(params, request.max_tokens)

    def _with_sampling(self, params: dict[str, Any], max_tokens: int) -> dict[str, Any]:
        """The output cap (reasoning models get room to think) and temperature 0 where allowed."""
        reasoning = self.model.startswith(_REASONING_PREFIXES)
        cap = max_tokens + (REASONING_ALLOWANCE if reasoning else 0)
        # OpenAI itself wants max_completion_tokens; compatible servers widely know only max_tokens.
        params["max_tokens" if self.base_url else "max_completion_tokens"] = cap
        if not reasoning:
            params["temperature"] = 0.0
        return params

    async def call(self, params: dict[str, Any]) -> RawReply:
        return self.to_reply(await self._client.chat.completions.create(**params))

    def to_reply(self, completion: openai.types.chat.ChatCompletion) -> RawReply:
        """The answer text and usage of a ChatCompletion (from a call, or from a batch's results)."""
        if not completion.choices:
            raise ValueError("the response has no choices")
        message = completion.choices[0].message
        text = message.content or ""
        if not text and getattr(message, "refusal", None):
            text = json.dumps({"refusal": message.refusal})  # fails parsing -> repair, then a reason
        u = completion.usage
        cached = 0
        if u is not None and u.prompt_tokens_details is not None:
            cached = u.prompt_tokens_details.cached_tokens or 0
        usage = Usage(
            input_tokens=(u.prompt_tokens - cached) if u else 0,
            output_tokens=u.completion_tokens if u else 0,
            cache_read=cached,
        )
        return RawReply(text=text, usage=usage, model=completion.model or self.model)

    # --- tool use (agent/llm/chat.py) ---------------------------------------------------------------
    def build_chat_params(self, request: ChatRequest) -> dict[str, Any]:
        """Function tools; the system message and the first user message's shared prefix lead every
        request byte for byte, so OpenAI's automatic prefix caching serves them from cache."""
        messages: list[dict[str, Any]] = [{"role": "system", "content": request.system}]
        for turn in request.turns:
            if turn.role == "assistant":
                message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
                if turn.tool_calls:
                    message["tool_calls"] = [
                        {"id": c.id, "type": "function",
                         "function": {"name": c.name, "arguments": c.arguments if isinstance(c.arguments, str)
                                      else json.dumps(c.arguments)}}
                        for c in turn.tool_calls]
                messages.append(message)
                continue
            messages += [{"role": "tool", "tool_call_id": o.call_id, "content": o.content}
                         for o in turn.tool_outputs]
            text = "\n\n".join(part for part in (turn.cached_prefix, turn.text) if part)
            if text:
                messages.append({"role": "user", "content": text})
        params: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "tools": [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                        "parameters": t.schema}} for t in request.tools],
        }
        return self._with_sampling(params, request.max_tokens)

    async def call_chat(self, params: dict[str, Any]) -> ChatReply:
        completion = await self._client.chat.completions.create(**params)
        if not completion.choices:
            raise ValueError("the response has no choices")
        message = completion.choices[0].message
        calls = []
        for call in message.tool_calls or ():
            raw = call.function.arguments or ""
            try:
                arguments: dict[str, Any] | str = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError:
                arguments = raw
            if not isinstance(arguments, dict | str):
                arguments = raw
            calls.append(ToolCall(call.id, call.function.name, arguments))
        return ChatReply(text=message.content or "", tool_calls=tuple(calls),
                         usage=self.to_reply(completion).usage, model=completion.model or self.model)

    def classify(self, exc: BaseException) -> ErrorKind | None:
        import openai

        if isinstance(exc, openai.APIConnectionError):  # includes timeouts
            return "retry"
        if isinstance(exc, openai.APIStatusError):
            return status_kind(exc.status_code)
        if isinstance(exc, openai.APIError | json.JSONDecodeError | ValueError):
            return "retry"  # a garbled response body: transient
        return None

    async def aclose(self) -> None:
        await self._client.close()
