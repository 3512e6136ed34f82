"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

Each token keeps its k largest pre-activations (ReLU applied to them). Training adds the AuxK loss:
the top k_aux = d_in / 2 pre-activations among dead latents reconstruct the main reconstruction's
residual, which gives dead latents a gradient again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from sae.model import SAE, SAEConfig, TrainContext, TrainStep


class TopKConfig(SAEConfig):
    architecture: Literal["topk"] = "topk"
    k: int = Field(gt=0)

    @model_validator(mode="after")
    def _k_fits(self) -> TopKConfig:
        if self.k > self.d_sae:
            raise ValueError(f"k={self.k} is larger than d_sae={self.d_sae}")
        return self


def topk_activation(hidden_pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest entries of the last dimension (ReLU on them), zero elsewhere."""
    top = hidden_pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(hidden_pre).scatter(-1, top.indices, torch.relu(top.values))


def auxk_loss(sae: SAE, xn: torch.Tensor, recon: torch.Tensor, hidden_pre: torch.Tensor,
              dead_mask: torch.Tensor | None) -> torch.Tensor:
    """AuxK: dead latents' top pre-activations reconstruct the (detached) residual.

    Scaled down by num_dead / k_aux when fewer latents are dead than k_aux (as SAELens does); the raw
    pre-activations are used (no ReLU) so latents whose pre-activations are all negative still learn.
    """
    if dead_mask is None:
        return recon.new_zeros(())
    num_dead = int(dead_mask.sum())
    if num_dead == 0:
        return recon.new_zeros(())
    k_aux = max(1, xn.shape[-1] // 2)
    scale = min(num_dead / k_aux, 1.0)
    k_aux = min(k_aux, num_dead)
    masked = torch.where(dead_mask, hidden_pre, torch.full_like(hidden_pre, -torch.inf))
    top = masked.topk(k_aux, dim=-1, sorted=False)
    aux_feats = torch.zeros_like(hidden_pre).scatter(-1, top.indices, top.values)
    residual = (xn - recon).detach()
    return scale * (aux_feats @ sae.W_dec - residual).pow(2).sum(dim=-1).mean()


def topk_training_step(sae: SAE, xn: torch.Tensor, ctx: TrainContext,
                       activate: Callable[[torch.Tensor], torch.Tensor]) -> TrainStep:
    """MSE plus the AuxK dead-latent loss, shared by TopK and BatchTopK (which differ in `activate`)."""
    hidden_pre = sae.pre_activation(xn)
    feats = activate(hidden_pre)
    recon = sae.decode_normalized(feats)
    mse = sae.mse(recon, xn)
    aux = auxk_loss(sae, xn, recon, hidden_pre, ctx.dead_mask)
    loss = mse + ctx.aux_k_coefficient * aux
    return TrainStep(loss=loss, recon=recon, feats=feats,
                     parts={"mse": float(mse.detach()), "auxk": float(aux.detach())})


class TopKSAE(SAE):
    config_class = TopKConfig
    saelens_architecture = "topk"

    @property
    def k(self) -> int:
        assert self.cfg.k is not None
        return self.cfg.k

    def activation(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        return topk_activation(hidden_pre, self.k)

    def saelens_fields(self) -> dict[str, Any]:
        # our top-k runs on the raw pre-activations, not on ones scaled by the decoder norms
        return {"k": self.k, "rescale_acts_by_decoder_norm": False}

    def training_step(self, xn: torch.Tensor, ctx: TrainContext) -> TrainStep:
        return topk_training_step(self, xn, ctx, lambda hidden_pre: topk_activation(hidden_pre, self.k))
