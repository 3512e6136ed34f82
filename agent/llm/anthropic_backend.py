"""Anthropic Messages API through the anthropic SDK.

Structured output, two ways (`structured=`):
- "json_schema": `output_config.format` with the output model's JSON schema (the strict subset);
  the answer is the text of the reply (thinking blocks skipped). Current models support it, and the
  newest reject forced tool use, so this is the default.
- "tool": the schema is a tool's input_schema and tool_choice forces the call; for models from
  before structured outputs (Claude 3.x, Claude 4.0), which "auto" picks by name.
The system block (the instructions every feature shares) is marked `cache_control: ephemeral`, so
after the first request it is read from the prompt cache. Newer models think adaptively before
answering; thinking counts towards max_tokens, so the cap gets a thinking allowance.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from agent.llm.base import ErrorKind, LLMRequest, ProviderBackend, RawReply, Usage, status_kind, strict_schema
from agent.llm.chat import ChatReply, ChatRequest, ToolCall
from agent.llm.prices import Price, anthropic_price
from storage.errors import ConfigError

if TYPE_CHECKING:
    import anthropic

StructuredMode = Literal["auto", "json_schema", "tool"]

# Models from before structured outputs: they get forced tool use.
_TOOL_MODE_PREFIXES = ("claude-3", "claude-2", "claude-instant", "claude-opus-4-0", "claude-opus-4-2025",
                       "claude-sonnet-4-0", "claude-sonnet-4-2025")
THINKING_ALLOWANCE = 8192


class AnthropicBackend(ProviderBackend):
    name = "anthropic"
    key_env = "ANTHROPIC_API_KEY"
    # USD per million tokens, list prices as last checked (November 2026; see agent/pricing.py)
    prices: ClassVar[dict[str, Price]] = {
        "claude-fable-5-1": anthropic_price(10.0, 50.0),
        "claude-opus-5-5": anthropic_price(4.0, 20.0),
        "claude-opus-5": anthropic_price(5.0, 25.0),
        "claude-sonnet-5-5": anthropic_price(2.0, 10.0),
        "claude-sonnet-5": anthropic_price(2.0, 10.0),
        "claude-opus-4-6": anthropic_price(5.0, 25.0),
        "claude-sonnet-4-6": anthropic_price(3.0, 15.0),
        "claude-opus-4-5": anthropic_price(5.0, 25.0),
        "claude-opus-4-1": anthropic_price(15.0, 75.0),
        "claude-opus-4": anthropic_price(15.0, 75.0),
        "claude-opus-4-0": anthropic_price(15.0, 75.0),
        "claude-sonnet-4-5": anthropic_price(3.0, 15.0),
        "claude-sonnet-4": anthropic_price(3.0, 15.0),
        "claude-sonnet-4-0": anthropic_price(3.0, 15.0),
        "claude-3-7-sonnet": anthropic_price(3.0, 15.0),
        "claude-3-5-sonnet": anthropic_price(3.0, 15.0),
        "claude-haiku-4-5": anthropic_price(1.0, 5.0),
        "claude-3-5-haiku": anthropic_price(0.8, 4.0),
        "claude-3-haiku": anthropic_price(0.25, 1.25),
    }
    default_model = "claude-sonnet-5-5"

    def __init__(
        self, model: str | None = None, *, structured: StructuredMode = "auto", **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        key = os.environ.get(self.key_env)
        if not key:
            raise ConfigError(f"the anthropic backend needs an API key: set {self.key_env}.")
        self.secrets = (key,)
        if structured == "auto":
            structured = "tool" if self.model.startswith(_TOOL_MODE_PREFIXES) else "json_schema"
        self.structured: Literal["json_schema", "tool"] = structured
        import anthropic  # the SDK is imported when used: it takes seconds, and most commands never need it

        # max_retries=0: tenacity in ProviderBackend.send owns retries.
        self._client: anthropic.AsyncAnthropic = anthropic.AsyncAnthropic(
            api_key=key, base_url=self.base_url, timeout=self.timeout_s, max_retries=0
        )

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        """The SDK client (the batch APIs in agent/llm/batch_api.py use it)."""
        return self._client

    def build_params(self, request: LLMRequest[Any]) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "system": [{"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        if self.structured == "tool":
            schema = request.output.model_json_schema()
            params["max_tokens"] = request.max_tokens
            params["tools"] = [{
                "name": request.schema_name,
                "description": schema.get("description") or f"Return the {request.schema_name}.",
                "input_schema": schema,
            }]
            params["tool_choice"] = {"type": "tool", "name": request.schema_name}
        else:
            params["max_tokens"] = request.max_tokens + THINKING_ALLOWANCE
            schema = strict_schema(request.output)
            params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        return params

    async def call(self, params: dict[str, Any]) -> RawReply:
        return self.to_reply(await self._client.messages.create(**params), params)

    def to_reply(self, message: anthropic.types.Message, params: dict[str, Any]) -> RawReply:
        """The answer text and usage of a Message (from a call, or from a batch's results)."""
        text = None
        if "tool_choice" in params:
            wanted = params["tool_choice"]["name"]
            for block in message.content:
                if block.type == "tool_use" and block.name == wanted:
                    text = json.dumps(block.input)
                    break
        if text is None:  # the JSON answer, or whatever text came back (parsing, then repair, judge it)
            text = "".join(b.text for b in message.content if b.type == "text")
        u = message.usage
        usage = Usage(
            input_tokens=u.input_tokens or 0,
            output_tokens=u.output_tokens or 0,
            cache_read=u.cache_read_input_tokens or 0,
            cache_write=u.cache_creation_input_tokens or 0,
        )
        return RawReply(text=text, usage=usage, model=message.model or self.model)

    # --- tool use (agent/llm/chat.py) ---------------------------------------------------------------
    def build_chat_params(self, request: ChatRequest) -> dict[str, Any]:
        """Tools, then the system block, then the first user message's shared prefix are cached."""
        messages: list[dict[str, Any]] = []
        for turn in request.turns:
            content: list[dict[str, Any]] = []
            if turn.role == "assistant":
                if turn.text:
                    content.append({"type": "text", "text": turn.text})
                for call in turn.tool_calls:
                    arguments = call.arguments
                    if not isinstance(arguments, dict):  # not a JSON object: echoed back as it came
                        arguments = {"_raw": arguments}
                    content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
            else:
                for output in turn.tool_outputs:  # tool results come first in a user message
                    content.append({"type": "tool_result", "tool_use_id": output.call_id,
                                    "content": output.content, "is_error": output.is_error})
                if turn.cached_prefix:
                    content.append({"type": "text", "text": turn.cached_prefix,
                                    "cache_control": {"type": "ephemeral"}})
                if turn.text:
                    content.append({"type": "text", "text": turn.text})
            messages.append({"role": turn.role, "content": content or [{"type": "text", "text": "(empty)"}]})
        return {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "system": [{"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}],
            "tools": [{"name": t.name, "description": t.description, "input_schema": t.schema}
                      for t in request.tools],
            "messages": messages,
        }

    async def call_chat(self, params: dict[str, Any]) -> ChatReply:
        message = await self._client.messages.create(**params)
        calls = tuple(ToolCall(b.id, b.name, b.input if isinstance(b.input, dict) else str(b.input))
                      for b in message.content if b.type == "tool_use")
        text = "".join(b.text for b in message.content if b.type == "text")
        return ChatReply(text=text, tool_calls=calls, usage=self.to_reply(message, params).usage,
                         model=message.model or self.model)

    def classify(self, exc: BaseException) -> ErrorKind | None:
        import anthropic

        if isinstance(exc, anthropic.APIConnectionError):  # includes timeouts
            return "retry"
        if isinstance(exc, anthropic.APIStatusError):
            return status_kind(exc.status_code)
        if isinstance(exc, anthropic.APIError | json.JSONDecodeError):
            return "retry"  # a garbled response body: transient
        return None

    async def aclose(self) -> None:
        await self._client.close()
