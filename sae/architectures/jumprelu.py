"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with
JumpReLU Sparse Autoencoders").

f_i = h_i * H(h_i - theta_i) with a learned threshold theta_i > 0 per feature (kept as log theta).
The step function has no useful gradient, so training uses the paper's straight-through estimators:
a rectangle kernel of width `bandwidth` around the threshold gives pseudo-derivatives for theta, both
through the activation and through the L0 penalty sum_i H(h_i - theta_i), which is what is penalised
(not L1).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field

from sae.model import SAE, SAEConfig, TrainContext, TrainStep


class JumpReLUConfig(SAEConfig):
    architecture: Literal["jumprelu"] = "jumprelu"
    bandwidth: float = Field(0.05, gt=0)
    init_threshold: float = Field(0.1, gt=0)


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _sum_to_threshold(grad: torch.Tensor) -> torch.Tensor:
    """Sum a [..., d_sae] gradient over every leading dimension to the threshold's [d_sae]."""
    return grad.reshape(-1, grad.shape[-1]).sum(dim=0)


class _JumpReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(h, threshold)
        ctx.bandwidth = bandwidth
        return h * (h > threshold).to(h.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        h, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_h = (h > threshold).to(h.dtype) * grad_out
        grad_t = _sum_to_threshold(-(threshold / eps) * _rectangle((h - threshold) / eps) * grad_out)
        return grad_h, grad_t, None


class _StepFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(h, threshold)
        ctx.bandwidth = bandwidth
        return (h > threshold).to(h.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        h, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_t = _sum_to_threshold(-(1.0 / eps) * _rectangle((h - threshold) / eps) * grad_out)
        return None, grad_t, None


class JumpReLUSAE(SAE):
    config_class = JumpReLUConfig
    saelens_architecture = "jumprelu"
    cfg: JumpReLUConfig

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        init = math.log(cfg.init_threshold)  # type: ignore[attr-defined]
        self.log_threshold = torch.nn.Parameter(torch.full((cfg.d_sae,), init, dtype=self.W_enc.dtype))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def activation(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(hidden_pre) * (hidden_pre > self.threshold)

    def training_step(self, xn: torch.Tensor, ctx: TrainContext) -> TrainStep:
        hidden_pre = self.pre_activation(xn)
        threshold = self.threshold
        feats = _JumpReLUFn.apply(hidden_pre, threshold, self.cfg.bandwidth)
        recon = self.decode_normalized(feats)
        mse = self.mse(recon, xn)
        l0 = _StepFn.apply(hidden_pre, threshold, self.cfg.bandwidth).sum(dim=-1).mean()
        loss = mse + ctx.l0_coefficient * l0
        return TrainStep(loss=loss, recon=recon, feats=feats,
                         parts={"mse": float(mse.detach()), "l0": float(l0.detach())})

    def _to_saved(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        saved = {name: t for name, t in state.items() if name != "log_threshold"}
        saved["threshold"] = state["log_threshold"].exp().contiguous()
        return saved

    def _from_saved(self, saved: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = {name: t for name, t in saved.items() if name != "threshold"}
        # Thresholds <= 0 (possible in imported SAEs) cannot be held as a log: clamp to a tiny
        # positive value, which gives the same activations since ReLU zeroes h <= 0 anyway.
        state["log_threshold"] = saved["threshold"].float().clamp_min(1e-30).log()
        return state
