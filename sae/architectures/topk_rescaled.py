"""TopK SAE whose kept activations are then scaled per feature (InterPLM's normalised TopK SAEs).

InterPLM's `ae_normalized.pt` stores each feature's maximum activation over their data set in
`activation_rescale_factor` and divides the features by it *after* the top-k choice. That choice
depends on the unscaled activations, so the factor cannot be folded into the encoder as it can for ReLU,
JumpReLU and threshold (BatchTopK) SAEs: this architecture keeps the plain TopK selection and multiplies
the kept activations by `feature_scale` [d_sae] (1 / factor; 0 for a dead feature, which then never
shows). The decoder rows carry the factor, so reconstructions are the unscaled SAE's.

Import only: `sae train` does not offer it (training_step trains the TopK part with the scale fixed).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from sae.architectures.topk import topk_activation, topk_training_step
from sae.model import SAE, SAEConfig, TrainContext, TrainStep


class TopKRescaledConfig(SAEConfig):
    architecture: Literal["topk_rescaled"] = "topk_rescaled"
    k: int = Field(gt=0)

    @model_validator(mode="after")
    def _k_fits(self) -> TopKRescaledConfig:
        if self.k > self.d_sae:
            raise ValueError(f"k={self.k} is larger than d_sae={self.d_sae}")
        return self


class TopKRescaledSAE(SAE):
    config_class = TopKRescaledConfig
    trainable = False
    # SAELens has no class for it (its TopK can rescale by decoder norms, not scale after the choice):
    # a name SAELens does not know, so its loader refuses the folder instead of giving other features.
    saelens_architecture = "plmlabel_topk_rescaled"

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("feature_scale", torch.ones(cfg.d_sae, dtype=self.W_enc.dtype))

    @property
    def k(self) -> int:
        assert self.cfg.k is not None
        return self.cfg.k

    def saelens_fields(self) -> dict[str, Any]:
        return {"k": self.k}

    def activation(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        return topk_activation(hidden_pre, self.k) * self.feature_scale.to(hidden_pre.dtype)

    def training_step(self, xn: torch.Tensor, ctx: TrainContext) -> TrainStep:
        return topk_training_step(self, xn, ctx, self.activation)
