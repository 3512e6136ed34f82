"""What a provider's tokens cost: the Price of a model, in USD per million tokens, per token kind.

Each provider module lists its models' prices (`ProviderBackend.prices`); agent/pricing.py puts
them into one table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cache_read: float
    cache_write: float


def anthropic_price(input_: float, output: float) -> Price:
    """Prompt caching: a 5-minute cache write costs 1.25x input, a cache read 0.1x input."""
    return Price(input_, output, round(input_ * 0.1, 4), round(input_ * 1.25, 4))


def openai_price(input_: float, output: float, cached: float) -> Price:
    """OpenAI caches automatically: writes cost nothing extra, reads the discounted price."""
    return Price(input_, output, cached, input_)
