"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders").

Two encoder paths share W_enc: the gate decides which features fire, the magnitude path how strongly.
With x' = xn - b_dec:
    pi_gate = x' @ W_enc + b_gate
    pi_mag  = x' @ (W_enc * exp(r_mag)) + b_mag
    f       = 1[pi_gate > 0] * relu(pi_mag)
The step has no gradient, so training adds the paper's two terms on relu(pi_gate): an L1 penalty
weighted by the decoder norms, and a reconstruction through a frozen (detached) decoder, which is what
trains the gate. Saved as SAELens's `gated` (W_enc, b_gate, b_mag, r_mag, W_dec, b_dec; no b_enc).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from sae.model import SAE, SAEConfig, TrainContext, TrainStep


class GatedConfig(SAEConfig):
    architecture: Literal["gated"] = "gated"


class GatedSAE(SAE):
    config_class = GatedConfig
    saelens_architecture = "gated"

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        dtype = self.W_enc.dtype
        del self.b_enc  # the gate and the magnitude path have their own biases
        self.b_gate = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))

    def _paths(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pi_gate, pi_mag); x' @ (W_enc * exp(r_mag)) computed as (x' @ W_enc) * exp(r_mag)."""
        shared = (xn - self.b_dec) @ self.W_enc
        return shared + self.b_gate, shared * self.r_mag.exp() + self.b_mag

    def pre_activation(self, xn: torch.Tensor) -> torch.Tensor:
        """The magnitude path's pre-activations (which features fire is the gate's decision)."""
        return self._paths(xn)[1]

    def activation(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(hidden_pre)

    def features_normalized(self, xn: torch.Tensor) -> torch.Tensor:
        gate, magnitude = self._paths(xn)
        return (gate > 0).to(magnitude.dtype) * torch.relu(magnitude)

    def training_step(self, xn: torch.Tensor, ctx: TrainContext) -> TrainStep:
        gate, magnitude = self._paths(xn)
        feats = (gate > 0).to(magnitude.dtype) * torch.relu(magnitude)
        recon = self.decode_normalized(feats)
        mse = self.mse(recon, xn)
        gate_acts = torch.relu(gate)
        l1 = (gate_acts * self.W_dec.norm(dim=-1)).sum(dim=-1).mean()
        aux = self.mse(gate_acts @ self.W_dec.detach() + self.b_dec.detach(), xn)
        loss = mse + ctx.l1_coefficient * l1 + aux
        return TrainStep(loss=loss, recon=recon, feats=feats,
                         parts={"mse": float(mse.detach()), "l1": float(l1.detach()),
                                "aux": float(aux.detach())})
