"""ReLU SAE with an L1 penalty (InterPLM / Anthropic April-2024 style).

The pre-encoder bias b_dec is subtracted before the encoder and added back by the decoder; the trainer
keeps decoder rows at unit norm, so the L1 penalty sum_i f_i * |W_dec_i| is plain L1 on the features.
SAELens calls this architecture `standard`.
"""

from __future__ import annotations

from typing import Literal

import torch

from sae.model import SAE, SAEConfig, TrainContext, TrainStep


class ReLUConfig(SAEConfig):
    architecture: Literal["relu"] = "relu"


class ReLUSAE(SAE):
    config_class = ReLUConfig
    saelens_architecture = "standard"

    def activation(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(hidden_pre)

    def training_step(self, xn: torch.Tensor, ctx: TrainContext) -> TrainStep:
        feats = torch.relu(self.pre_activation(xn))
        recon = self.decode_normalized(feats)
        mse = self.mse(recon, xn)
        l1 = (feats.sum(dim=0) * self.W_dec.norm(dim=-1)).sum() / feats.shape[0]  # mean_t sum_i f_ti |d_i|
        loss = mse + ctx.l1_coefficient * l1
        return TrainStep(loss=loss, recon=recon, feats=feats,
                         parts={"mse": float(mse.detach()), "l1": float(l1.detach())})
