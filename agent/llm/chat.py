"""Tool use: a conversation with tools, one turn at a time (`ProviderBackend.converse`).

    reply = await llm.converse(ChatRequest(system, turns, tools, max_tokens))
    reply.text, reply.tool_calls, reply.usage

Provider-neutral types; each backend maps them to its API (Anthropic `tool_use` / `tool_result`
blocks; OpenAI `tool_calls` and `role: tool` messages). A turn may carry a `cached_prefix`: text
that every turn of this conversation (and every feature's conversation up to it) repeats, sent
first in that message; Anthropic marks it with `cache_control`, OpenAI's automatic prefix caching
finds it because it is byte-identical at the start of every request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from agent.llm.base import Usage


@dataclass(frozen=True)
class ToolDef:
    name: str
    description: str
    schema: dict[str, Any]  # JSON schema of the arguments


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any] | str  # a string when the model sent arguments that are not a JSON object


@dataclass(frozen=True)
class ToolOutput:
    call_id: str
    content: str
    is_error: bool = False


@dataclass(frozen=True)
class ChatTurn:
    role: Literal["user", "assistant"]
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns
    tool_outputs: tuple[ToolOutput, ...] = ()  # user turns: results of the previous turn's calls
    cached_prefix: str | None = None  # user turns: the shared part, sent first and marked cacheable


@dataclass(frozen=True)
class ChatRequest:
    system: str
    turns: tuple[ChatTurn, ...]
    tools: tuple[ToolDef, ...]
    max_tokens: int = 2048


@dataclass(frozen=True)
class ChatReply:
    text: str
    tool_calls: tuple[ToolCall, ...]
    usage: Usage
    model: str
