"""What a request costs: a price table per model, in USD per million tokens.

Each provider module lists its models (`ProviderBackend.prices`); this module joins them into one
table. Prices are the providers' published list prices as last checked (November 2026; they
change: edit the provider's prices, a label keeps the cost computed when it was made). Models we
could not check a price for are left out on purpose: an unknown model costs None, never a guess,
and the job labels anyway and warns. A dated snapshot ("claude-sonnet-4-5-20250929",
"gpt-4o-2024-08-06") uses its family's price. Batch APIs bill half the price of every line.

Token kinds follow Anthropic's split (OpenAI usage is normalised to it in agent/llm): `input`
excludes cached tokens, `cache_read` are tokens served from the prompt cache, `cache_write` are
tokens written to it.
"""

from __future__ import annotations

import re

from agent.llm import PROVIDERS
from agent.llm.prices import Price

BATCH_DISCOUNT = 0.5
CHARS_PER_TOKEN = 4  # the rough rule used for estimates before sending


def price_table() -> dict[str, Price]:
    """Every registered provider's prices, and the baseline's (no LLM at all)."""
    table = {model: price for provider in PROVIDERS.values() for model, price in provider.prices.items()}
    table["baseline"] = Price(0.0, 0.0, 0.0, 0.0)
    return table


PRICES: dict[str, Price] = price_table()  # as registered at import; price_for reads the registry live


_SNAPSHOT = re.compile(r"(-\d{8}|-\d{4}-\d{2}-\d{2}|-latest)?")


def price_for(model: str) -> Price | None:
    """The price of `model` or of the family its dated snapshot belongs to; None when not in the table.

    Only a date or '-latest' may follow a key: 'claude-opus-4-7' is not 'claude-opus-4'.
    """
    for key, price in price_table().items():
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
