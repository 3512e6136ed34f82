"""What a request costs: a price table per model, in USD per million tokens.

Prices are the providers' published list prices as last checked (November 2026; they change: edit
the table, a label keeps the cost computed when it was made). Models we could not check a price for
are left out on purpose: an unknown model costs None, never a guess, and the job labels anyway and
warns. A dated snapshot ("claude-sonnet-4-5-20250929", "gpt-4o-2024-08-06") uses its family's
price. Batch APIs bill half the price of every line.

Token kinds follow Anthropic's split (OpenAI usage is normalised to it in agent/llm): `input`
excludes cached tokens, `cache_read` are tokens served from the prompt cache, `cache_write` are
tokens written to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BATCH_DISCOUNT = 0.5
CHARS_PER_TOKEN = 4  # the rough rule used for estimates before sending


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cache_read: float
    cache_write: float


def _anthropic(input_: float, output: float) -> Price:
    # Prompt caching: a 5-minute cache write costs 1.25x input, a cache read 0.1x input.
    return Price(input_, output, round(input_ * 0.1, 4), round(input_ * 1.25, 4))


def _openai(input_: float, output: float, cached: float) -> Price:
    # OpenAI caches automatically: writes cost nothing extra, reads the discounted price.
    return Price(input_, output, cached, input_)


PRICES: dict[str, Price] = {
    # Anthropic
    "claude-fable-5-1": _anthropic(10.0, 50.0),
    "claude-opus-5-5": _anthropic(4.0, 20.0),
    "claude-opus-5": _anthropic(5.0, 25.0),
    "claude-sonnet-5-5": _anthropic(2.0, 10.0),
    "claude-sonnet-5": _anthropic(2.0, 10.0),
    "claude-opus-4-6": _anthropic(5.0, 25.0),
    "claude-sonnet-4-6": _anthropic(3.0, 15.0),
    "claude-opus-4-5": _anthropic(5.0, 25.0),
    "claude-opus-4-1": _anthropic(15.0, 75.0),
    "claude-opus-4": _anthropic(15.0, 75.0),
    "claude-opus-4-0": _anthropic(15.0, 75.0),
    "claude-sonnet-4-5": _anthropic(3.0, 15.0),
    "claude-sonnet-4": _anthropic(3.0, 15.0),
    "claude-sonnet-4-0": _anthropic(3.0, 15.0),
    "claude-3-7-sonnet": _anthropic(3.0, 15.0),
    "claude-3-5-sonnet": _anthropic(3.0, 15.0),
    "claude-haiku-4-5": _anthropic(1.0, 5.0),
    "claude-3-5-haiku": _anthropic(0.8, 4.0),
    "claude-3-haiku": _anthropic(0.25, 1.25),
    # OpenAI
    "gpt-5.4": _openai(2.5, 15.0, 0.25),
    "gpt-5.4-mini": _openai(0.75, 4.5, 0.075),
    "gpt-5": _openai(1.25, 10.0, 0.125),
    "gpt-5-mini": _openai(0.25, 2.0, 0.025),
    "gpt-5-nano": _openai(0.05, 0.4, 0.005),
    "gpt-4.1": _openai(2.0, 8.0, 0.5),
    "gpt-4.1-mini": _openai(0.4, 1.6, 0.1),
    "gpt-4.1-nano": _openai(0.1, 0.4, 0.025),
    "gpt-4o": _openai(2.5, 10.0, 1.25),
    "gpt-4o-mini": _openai(0.15, 0.6, 0.075),
    "o4-mini": _openai(1.1, 4.4, 0.275),
    "o3": _openai(2.0, 8.0, 0.5),
    # No LLM at all.
    "baseline": Price(0.0, 0.0, 0.0, 0.0),
}


_SNAPSHOT = re.compile(r"(-\d{8}|-\d{4}-\d{2}-\d{2}|-latest)?")


def price_for(model: str) -> Price | None:
    """The price of `model` or of the family its dated snapshot belongs to; None when not in the table.

    Only a date or '-latest' may follow a key: 'claude-opus-4-7' is not 'claude-opus-4'.
    """
    for key, price in PRICES.items():
        if model.startswith(key) and _SNAPSHOT.fullmatch(model[len(key):]):
            return price
    return None


def cost_usd(
    model: str,
    *,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read: int = 0,
    cache_write: int = 0,
    batch: bool = False,
) -> float | None:
    """USD for the given token counts, or None for a model with no price entry."""
    price = price_for(model)
    if price is None:
        return None
    total = (
        input_tokens * price.input
        + output_tokens * price.output
        + cache_read * price.cache_read
        + cache_write * price.cache_write
    ) / 1_000_000
    return total * BATCH_DISCOUNT if batch else total


def estimate_tokens(text: str) -> int:
    """Rough token count before sending (about four characters per token)."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN))
