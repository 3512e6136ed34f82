"""The providers' batch APIs behind one small interface: submit lines, poll, fetch results.

    api = agent.llm.batch_api(llm)           # the provider's registered batch API
    batch_id = await api.submit([(custom_id, params), ...])
    state = await api.poll(batch_id)         # BatchState(ended, status, detail)
    results = await api.results(batch_id, state)   # custom_id -> LineResult(raw answer | error)
    reply = api.reply(result.raw, request)   # the raw answer as a RawReply, parsed like a sync call's

Lines are the same SDK parameters a synchronous call sends (`ProviderBackend.build_params`), so a
batch answer parses, repairs and scores exactly like a synchronous one. Every HTTP call goes through
the provider's retry policy (`ProviderBackend.retrying`); failures are ProviderError.

- Anthropic Message Batches: `messages.batches.create(requests=[{custom_id, params}])`,
  `.retrieve(id)` until `processing_status == "ended"`, `.results(id)` streams the JSONL of
  `{custom_id, result: succeeded(message) | errored(error) | expired | canceled}`.
- OpenAI Batch: the lines `{custom_id, method: POST, url: /v1/chat/completions, body: params}` are
  uploaded as a JSONL file (`files.create(purpose="batch")`), then `batches.create(input_file_id,
  endpoint, completion_window="24h")`; `batches.retrieve(id)` until completed/failed/expired/
  cancelled; answers in `output_file_id`, failed and never-run lines in `error_file_id`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from agent.llm.anthropic_backend import AnthropicBackend
from agent.llm.base import LLMRequest, ProviderBackend, RawReply
from agent.llm.openai_backend import OpenAIBackend

Line = tuple[str, dict[str, Any]]  # (custom_id, the SDK call's parameters)


@dataclass(frozen=True)
class BatchState:
    ended: bool
    status: str  # the provider's own word
    detail: str | None = None  # why a whole batch failed, when it did


@dataclass(frozen=True)
class LineResult:
    """One request's outcome: the provider's answer object, or why there is none."""

    raw: Any = None
    error: str | None = None


class BatchAPI(ABC):
    provider: ClassVar[str]
    max_requests: ClassVar[int]  # per batch
    max_bytes: ClassVar[int]  # per batch, with room to spare under the provider's limit

    def __init__(self, llm: ProviderBackend) -> None:
        self.llm = llm

    @abstractmethod
    async def submit(self, lines: Sequence[Line]) -> str:
        """Create a batch of `lines`; returns its id."""

    @abstractmethod
    async def poll(self, batch_id: str) -> BatchState: ...

    @abstractmethod
    async def results(self, batch_id: str, state: BatchState) -> dict[str, LineResult]:
        """Every line's result of an ended batch, by custom_id."""

    @abstractmethod
    def reply(self, raw: Any, request: LLMRequest[Any]) -> RawReply:
        """An answer from `results` as the synchronous path sees one (ValueError when unusable)."""

    @staticmethod
    def line_size(line: Line) -> int:
        return len(json.dumps(line[1])) + len(line[0]) + 100


class AnthropicBatches(BatchAPI):
    provider = "anthropic"
    max_requests = 100_000
    max_bytes = 200 * 1024 * 1024  # the API's limit is 256 MB

    def __init__(self, llm: AnthropicBackend) -> None:
        super().__init__(llm)
        self.client = llm.client

    async def submit(self, lines: Sequence[Line]) -> str:
        requests: Any = [{"custom_id": cid, "params": params} for cid, params in lines]

        async def create() -> str:
            return (await self.client.messages.batches.create(requests=requests)).id

        return await self.llm.retrying(create, "batch submission")

    async def poll(self, batch_id: str) -> BatchState:
        batch = await self.llm.retrying(lambda: self.client.messages.batches.retrieve(batch_id), "batch poll")
        return BatchState(batch.processing_status == "ended", batch.processing_status)

    async def results(self, batch_id: str, state: BatchState) -> dict[str, LineResult]:
        async def fetch() -> dict[str, LineResult]:
            out: dict[str, LineResult] = {}
            async for item in await self.client.messages.batches.results(batch_id):
                result = item.result
                if result.type == "succeeded":
                    out[item.custom_id] = LineResult(raw=result.message)
                elif result.type == "errored":
                    error = result.error.error
                    out[item.custom_id] = LineResult(
                        error=f"the batch request errored: {error.type}: {error.message}")
                elif result.type == "expired":
                    out[item.custom_id] = LineResult(error="the batch request expired before it was run "
                                                           "(the provider's 24 h window)")
                else:
                    out[item.custom_id] = LineResult(error=f"the batch request was {result.type}")
            return out

        return await self.llm.retrying(fetch, "batch results")

    def reply(self, raw: Any, request: LLMRequest[Any]) -> RawReply:
        llm = self.llm
        assert isinstance(llm, AnthropicBackend)
        return llm.to_reply(raw, llm.build_params(request))


_OPENAI_ENDED = {"completed", "failed", "expired", "cancelled"}
_ENDPOINT = "/v1/chat/completions"


class OpenAIBatches(BatchAPI):
    provider = "openai"
    max_requests = 50_000
    max_bytes = 180 * 1024 * 1024  # the API's limit is 200 MB

    def __init__(self, llm: OpenAIBackend) -> None:
        super().__init__(llm)
        self.client = llm.client

    async def submit(self, lines: Sequence[Line]) -> str:
        rows = ({"custom_id": cid, "method": "POST", "url": _ENDPOINT, "body": params}
                for cid, params in lines)
        data = b"".join(json.dumps(row).encode() + b"\n" for row in rows)

        async def create() -> str:
            upload = await self.client.files.create(file=("plmlabel-batch.jsonl", data, "application/jsonl"),
                                                    purpose="batch")
            batch = await self.client.batches.create(input_file_id=upload.id, endpoint=_ENDPOINT,
                                                     completion_window="24h")
            return batch.id

        return await self.llm.retrying(create, "batch submission")

    async def poll(self, batch_id: str) -> BatchState:
        batch = await self.llm.retrying(lambda: self.client.batches.retrieve(batch_id), "batch poll")
        detail = None
        if batch.errors is not None and batch.errors.data:
            detail = "; ".join(e.message or e.code or "unknown error" for e in batch.errors.data[:3])
        return BatchState(batch.status in _OPENAI_ENDED, batch.status, detail)

    async def results(self, batch_id: str, state: BatchState) -> dict[str, LineResult]:
        batch = await self.llm.retrying(lambda: self.client.batches.retrieve(batch_id), "batch poll")
        out: dict[str, LineResult] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await self.llm.retrying(lambda f=file_id: self.client.files.content(f), "batch results")
            for text in content.text.splitlines():
                if text.strip():
                    line = json.loads(text)
                    out[line["custom_id"]] = _openai_line(line)
        return out

    def reply(self, raw: Any, request: LLMRequest[Any]) -> RawReply:
        from openai.types.chat import ChatCompletion

        llm = self.llm
        assert isinstance(llm, OpenAIBackend)
        return llm.to_reply(ChatCompletion.model_validate(raw))


def _openai_line(line: dict[str, Any]) -> LineResult:
    error = line.get("error")
    if error:
        return LineResult(error=f"the batch request failed: {error.get('code')}: {error.get('message')}")
    response = line.get("response") or {}
    status = response.get("status_code")
    body = response.get("body") or {}
    if status == 200:
        return LineResult(raw=body)
    message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
    return LineResult(error=f"the batch request failed: HTTP {status}" + (f" ({message})" if message else ""))
