"""One line of a provider batch: what collecting it needs, and its answer parsed like a synchronous one.

PendingLine       stored per custom_id in `batches.requests`: feature, stage, the work so far
answer_line(...)  (parsed, usage, cost, error, fatal): batch price; a malformed answer gets the one
                  repair of the synchronous path, sent as a normal (full-price) call
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from agent.backends import Labeler
from agent.labeling.protocol import add_cost
from agent.llm import BatchAPI, BatchState, LineResult, LLMError, LLMRequest, Usage, parse_output


class PendingLine(BaseModel):
    """What collecting one batch line needs (stored per custom_id in `batches.requests`)."""

    feature: int
    stage: str
    index: int  # the stage's position in the labeler's stages
    prompt_versions: dict[str, str | None]
    carried: dict[str, Any]  # FeatureWork.carried() when the request went out


def read_pending(data: dict[str, Any]) -> PendingLine:
    """A stored line; lines written before the protocol was one (explain/simulate with their own
    fields) are read as the same explain (stage 0) and simulate (stage 1) lines."""
    if "carried" in data:
        return PendingLine.model_validate(data)
    carried = {
        "explanation": data.get("explanation"),
        "usage": data.get("explain_usage") or {},
        "cost": data.get("explain_cost", 0.0) if data.get("explain_usage") is not None else 0.0,
        "index_hash": data.get("index_hash"),
        "simulation": None,
        "residues": None,
        "trace": None,
        "test_pearson": None,
        "pending": {},
    }
    if data["stage"] != "explain":  # old explain lines did not record the held-out accessions
        carried["heldout"] = data.get("heldout") or []
    return PendingLine(
        feature=data["feature"],
        stage=data["stage"],
        index=0 if data["stage"] == "explain" else 1,
        prompt_versions=data.get("prompt_versions") or {},
        carried=carried,
    )


Entry = tuple[str, dict[str, Any], PendingLine]  # (custom_id, SDK parameters, what collecting needs)


def missing(state: BatchState) -> LineResult:
    why = state.detail or f"the batch ended ({state.status}) without a result for it"
    return LineResult(error=f"no answer: {why}")


async def answer_line(
    api: BatchAPI, labeler: Labeler, item: LineResult, request: LLMRequest[Any]
) -> tuple[Any, Usage, float | None, str | None, bool]:
    """(parsed, usage, cost, error, fatal) of one batch line."""
    if item.error is not None:
        return None, Usage(), 0.0, item.error, False
    try:
        reply = api.reply(item.raw, request)
    except ValueError as exc:
        return None, Usage(), 0.0, f"unusable batch answer: {str(exc).splitlines()[0][:200]}", False
    usage, cost = reply.usage, labeler.cost(reply.usage, batch=True)
    try:
        return parse_output(reply.text, request), usage, cost, None, False
    except ValueError as exc:
        first_error = str(exc)
    try:
        repaired = await api.llm.repair(request, reply, first_error)
    except LLMError as exc:
        return None, usage + exc.usage, add_cost(cost, labeler.cost(exc.usage)), exc.reason, exc.fatal
    return repaired.parsed, usage + repaired.usage, add_cost(cost, labeler.cost(repaired.usage)), None, False
