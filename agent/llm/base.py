"""The LLM interface: one async `generate(request) -> LLMResult[T]` over a pydantic output model.

A request carries a system block (the shared instructions: cacheable), user/assistant messages and
the pydantic model the answer must parse into. `ProviderBackend` holds what every HTTP provider
shares:

- retries (tenacity) on rate limits, 5xx/529, timeouts and connection errors, with exponential
  backoff and jitter, honouring `retry-after`; the SDKs' own retries are switched off so these are
  the only ones;
- one repair attempt for a malformed answer (invalid JSON, schema violation, failed extra check):
  the error goes back to the model once; a second failure raises MalformedOutputError.

Failures surface as LLMError subclasses carrying the tokens spent, so a failed feature's cost is
still counted. `fatal` marks errors that will not get better by trying other features (a bad key,
an unknown model): the job stops sending.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, Literal, TypeVar

import tenacity
from pydantic import BaseModel, ValidationError

import prompts
from agent.llm.prices import Price

log = logging.getLogger("plmlabel.llm")

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")

ErrorKind = Literal["retry", "fatal", "fail"]
FATAL_STATUS = frozenset({401, 403, 404})  # bad key, no access, unknown model: no other request fares better


def status_kind(status: int) -> ErrorKind:
    """What an HTTP error status from a provider means for the request (both providers agree)."""
    if status in (408, 409, 429) or status >= 500:
        return "retry"
    return "fatal" if status in FATAL_STATUS else "fail"


@dataclass(frozen=True)
class Message:
    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class Usage:
    """Tokens of one or more calls. `input_tokens` excludes cached tokens (Anthropic's convention)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read: int = 0
    cache_write: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read + other.cache_read,
            self.cache_write + other.cache_write,
        )

    @property
    def total_input(self) -> int:
        """Every input token processed, cached or not."""
        return self.input_tokens + self.cache_read + self.cache_write


@dataclass(frozen=True)
class LLMRequest(Generic[T]):
    """What to ask. `check` is validation beyond the schema (raise ValueError with a reason)."""

    system: str
    messages: tuple[Message, ...]
    output: type[T]
    schema_name: str
    max_tokens: int = 1024
    check: Callable[[T], None] | None = field(default=None, compare=False)

    @property
    def text(self) -> str:
        """The whole prompt as text (for dry runs and estimates)."""
        return "\n\n".join([self.system, *(m.content for m in self.messages)])


@dataclass(frozen=True)
class LLMResult(Generic[T]):
    parsed: T
    usage: Usage
    model: str
    repaired: bool = False


@dataclass(frozen=True)
class RawReply:
    """A provider's answer before parsing: the structured answer as JSON text."""

    text: str
    usage: Usage
    model: str


class LLMError(Exception):
    """A request that did not produce a usable answer. `reason` is one line for the label store."""

    def __init__(self, reason: str, *, usage: Usage | None = None, fatal: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.usage = usage or Usage()
        self.fatal = fatal


class ProviderError(LLMError):
    """The provider failed: retries exhausted, or an error retrying cannot fix. `status`: its HTTP status."""

    def __init__(self, reason: str, *, usage: Usage | None = None, fatal: bool = False,
                 status: int | None = None) -> None:
        super().__init__(reason, usage=usage, fatal=fatal)
        self.status = status


class MalformedOutputError(LLMError):
    """The answer did not parse into the output model, even after one repair attempt."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry. Tests shrink the waits to milliseconds."""

    max_attempts: int = 5  # attempts in all, the first one included
    initial_wait: float = 1.0  # seconds; the exponential backoff's multiplier
    max_wait: float = 60.0  # cap on any single wait, retry-after included


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_summary(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:4]:
            where = ".".join(str(p) for p in err["loc"]) or "(root)"
            parts.append(f"{where}: {err['msg']}")
        more = f" (+{exc.error_count() - 4} more)" if exc.error_count() > 4 else ""
        return "; ".join(parts) + more
    return str(exc)


REDACTED = "[redacted]"


def redact(text: str, secrets: tuple[str, ...] | list[str]) -> str:
    """Replace every occurrence of each secret (keys of 8 characters or more) in `text`."""
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, REDACTED)
    return text


def parse_output(text: str, request: LLMRequest[T]) -> T:
    """Parse an answer into the request's model; ValueError with a short reason when it fails."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the answer is not valid JSON ({exc.msg} at position {exc.pos})") from exc
    try:
        parsed = request.output.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"the answer does not match the schema: {_error_summary(exc)}") from exc
    if request.check is not None:
        request.check(parsed)
    return parsed


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema in the subset strict structured outputs accept.

    Every object closes (`additionalProperties: false`) and requires all its properties; keywords
    outside the subset (defaults, bounds, formats) are dropped: pydantic still enforces them when the
    answer is parsed, and a violation goes back to the model as a repair.
    """

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _UNSUPPORTED:
                continue
            if key in ("properties", "$defs"):
                out[key] = {name: walk(sub) for name, sub in value.items()}
            else:
                out[key] = walk(value)
        if "properties" in out:
            out["required"] = list(out["properties"])
            out["additionalProperties"] = False
        return out

    return walk(model.model_json_schema())


_UNSUPPORTED = {"default", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
                "maxLength", "pattern", "format", "minItems", "maxItems", "uniqueItems", "examples"}


class ProviderBackend(ABC):
    """An LLM reached over HTTP through its SDK. Subclasses build params, call, classify errors."""

    name: ClassVar[str]
    key_env: ClassVar[str]
    default_model: ClassVar[str]
    prices: ClassVar[Mapping[str, Price]] = {}  # model -> USD per million tokens (agent/pricing.py)

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.model = model or self.default_model
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.secrets: tuple[str, ...] = ()  # the configured key(s): cut from every message we keep or show

    # --- what each provider supplies ---------------------------------------------------------------
    @abstractmethod
    def build_params(self, request: LLMRequest[Any]) -> dict[str, Any]:
        """The SDK call's keyword arguments (also the body of a batch line)."""

    @abstractmethod
    async def call(self, params: dict[str, Any]) -> RawReply:
        """One HTTP call, no retries."""

    @abstractmethod
    def classify(self, exc: BaseException) -> ErrorKind | None:
        """'retry' (transient), 'fatal' (stop the job), 'fail' (this request only), None (not ours)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the HTTP client."""

    def build_chat_params(self, request: Any) -> dict[str, Any]:
        """The SDK call's arguments for one turn of a tool conversation (agent/llm/chat.py)."""
        raise NotImplementedError(f"{self.name} has no tool use")

    async def call_chat(self, params: dict[str, Any]) -> Any:
        """One HTTP call of a tool conversation, no retries -> ChatReply."""
        raise NotImplementedError(f"{self.name} has no tool use")

    async def converse(self, request: Any) -> Any:
        """One turn of a tool conversation (ChatRequest -> ChatReply), with retries."""
        params = self.build_chat_params(request)
        return await self.retrying(lambda: self.call_chat(params), what="agent turn")

    # --- shared behaviour --------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """`text` without the configured key (a proxy or server may echo it back in an error body)."""
        return redact(text, self.secrets)

    def retry_after(self, exc: BaseException) -> float | None:
        response = getattr(exc, "response", None)
        return parse_retry_after(getattr(response, "headers", None))

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = self.retry_after(exc) if exc is not None else None
        if hinted is not None:
            return min(hinted, self.retry.max_wait)
        backoff = tenacity.wait_random_exponential(multiplier=self.retry.initial_wait,
                                                   max=self.retry.max_wait)
        return backoff(state)

    async def retrying(self, call: Callable[[], Awaitable[R]], what: str = "request") -> R:
        """`call()` under this provider's retry policy; ProviderError when it cannot succeed.

        Also what the batch APIs (agent/llm/batch_api.py) send their calls through.
        """
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(lambda e: self.classify(e) == "retry"),
            stop=tenacity.stop_after_attempt(self.retry.max_attempts),
            wait=self._wait,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await call()
        except Exception as exc:
            kind = self.classify(exc)
            if kind is None:
                raise
            status = getattr(exc, "status_code", None)
            how = f"HTTP {status}" if status else type(exc).__name__
            detail = self.redact(str(exc)).splitlines()[0][:200] if str(exc) else ""
            gave_up = f" after {self.retry.max_attempts} attempts" if kind == "retry" else ""
            raise ProviderError(
                f"{self.name} {what} failed{gave_up}: {how}" + (f" ({detail})" if detail else ""),
                fatal=kind == "fatal", status=status,
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(self, request: LLMRequest[Any]) -> RawReply:
        """One request with retries; ProviderError when it cannot get an answer."""
        params = self.build_params(request)
        return await self.retrying(lambda: self.call(params))

    async def generate(self, request: LLMRequest[T]) -> LLMResult[T]:
        """Ask, parse; on a malformed answer send the error back once, then give up."""
        reply = await self._send_counted(request, Usage())
        try:
            return LLMResult(parse_output(reply.text, request), reply.usage, reply.model)
        except ValueError as exc:
            first_error = str(exc)
        return await self.repair(request, reply, first_error, spent=reply.usage)

    async def repair(
        self, request: LLMRequest[T], reply: RawReply, error: str, *, spent: Usage | None = None
    ) -> LLMResult[T]:
        """The one repair attempt for a malformed `reply`: the error goes back to the model in a new call.

        `reply` may come from a call or from a batch's results. The result's usage is `spent` plus
        the repair call's; MalformedOutputError when the repaired answer fails too.
        """
        spent = spent or Usage()
        log.info("malformed answer from %s, repairing: %s", self.model, error)
        repair = prompts.load("repair").render("user", error=error)
        turns = (Message("assistant", reply.text or "(empty)"), Message("user", repair))
        retry_request = replace(request, messages=(*request.messages, *turns))
        answer = await self._send_counted(retry_request, spent)
        usage = spent + answer.usage
        try:
            return LLMResult(parse_output(answer.text, request), usage, answer.model, repaired=True)
        except ValueError as exc:
            reason = f"malformed answer after one repair attempt: {exc}"
            raise MalformedOutputError(reason, usage=usage) from exc

    async def _send_counted(self, request: LLMRequest[Any], spent: Usage) -> RawReply:
        try:
            return await self.send(request)
        except ProviderError as exc:
            exc.usage = spent + exc.usage
            raise
