"""BatchTopK SAE (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders").

Training keeps the k * batch_size largest ReLU activations over the whole batch, so k is an average per
token. Inference cannot depend on the batch: a feature fires when its pre-activation exceeds a
threshold, estimated during training as a running average (EMA) of the smallest activation the batch
top-k kept. Saved as `threshold` [d_sae] (one value repeated), the form SAELens loads as JumpReLU.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from sae.architectures.topk import topk_training_step
from sae.model import SAE, SAEConfig, TrainContext, TrainStep


class BatchTopKConfig(SAEConfig):
    architecture: Literal["batchtopk"] = "batchtopk"
    k: int = Field(gt=0)
    threshold_ema: float = Field(0.01, gt=0, le=1)

    @model_validator(mode="after")
    def _k_fits(self) -> BatchTopKConfig:
        if self.k > self.d_sae:
            raise ValueError(f"k={self.k} is larger than d_sae={self.d_sae}")
        return self


def batch_topk_activation(hidden_pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k * n_tokens largest ReLU activations of the flattened batch [n_tokens, d_sae]."""
    acts = torch.relu(hidden_pre)
    flat = acts.flatten()
    n_keep = min(k * acts.shape[0], flat.numel())
    top = flat.topk(n_keep, sorted=False)
    return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)


class BatchTopKSAE(SAE):
    config_class = BatchTopKConfig
    saelens_architecture = "jumprelu"

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(cfg.d_sae, dtype=torch.float32))
        # How many batches fed the EMA (0: the first batch sets the threshold outright). Not saved.
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))

    @property
    def k(self) -> int:
        assert self.cfg.k is not None
        return self.cfg.k

    def activation(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(hidden_pre) * (hidden_pre > self.threshold.to(hidden_pre.dtype))

    def training_step(self, xn: torch.Tensor, ctx: TrainContext) -> TrainStep:
        return topk_training_step(self, xn, ctx, lambda hidden_pre: batch_topk_activation(hidden_pre, self.k))

    @torch.no_grad()
    def after_step(self, step: TrainStep) -> None:
        positive = step.feats[step.feats > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min().double()
        if int(self.threshold_updates) == 0:
            value = smallest
        else:
            rate = self.cfg.threshold_ema  # type: ignore[attr-defined]
            value = (1 - rate) * self.threshold[0].double() + rate * smallest
        self.threshold.fill_(float(value))
        self.threshold_updates += 1

    def _to_saved(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: t for name, t in state.items() if name != "threshold_updates"}

    def _from_saved(self, saved: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**saved, "threshold_updates": torch.ones((), dtype=torch.long)}
