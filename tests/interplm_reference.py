"""InterPLM's SAE classes rebuilt for tests, written by us from reading interplm/sae/dictionary.py and
interplm/sae/normalize.py (github.com/ElanaPearl/InterPLM; their package is not on a registry).

Each class has their module layout (so `state_dict()` gives their tensor names and shapes, with the
`normalize_to_sqrt_d` flag their Dictionary adds when saving) and their inference math, independent of
plmlabel's importer. `features(x)` is their encode on their normalised input with normalize_features=True
(0 where the rescale factor is 0: a dead feature; their own division gives NaN there), `recon(x)` is their
forward(x, unnormalize=True). Files are written as they write them: torch.save(sae.state_dict(), path).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Dictionary(nn.Module):
    def __init__(self, d_in: int, d_sae: int, sqrt_d: bool) -> None:
        super().__init__()
        self.d_in, self.d_sae, self.normalize_to_sqrt_d = d_in, d_sae, sqrt_d

    def add_rescale_buffer(self) -> None:
        self.register_buffer("activation_rescale_factor", torch.ones(self.d_sae))

    def state_dict(self, *args, **kwargs):  # their _save_to_state_dict adds the flag
        state = super().state_dict(*args, **kwargs)
        state["normalize_to_sqrt_d"] = torch.tensor(self.normalize_to_sqrt_d, dtype=torch.bool)
        return state

    # --- their Dictionary's sqrt(d) normalisation -------------------------------------------------------
    def _normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.normalize_to_sqrt_d:
            return x, None
        norms = torch.norm(x, dim=-1, keepdim=True).clamp(min=1e-8)
        return nn.functional.normalize(x, p=2, dim=-1) * math.sqrt(x.shape[-1]), norms

    def _unnormalize(self, y: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        return y if norms is None else y * norms / math.sqrt(y.shape[-1])

    # --- what the tests compare -------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        xn, _ = self._normalize(x)
        factor = getattr(self, "activation_rescale_factor", None)
        raw = self.encode_raw(xn)
        if factor is None:
            return raw
        return torch.where(factor > 0, raw / factor, torch.zeros_like(raw))

    @torch.no_grad()
    def recon(self, x: torch.Tensor) -> torch.Tensor:
        xn, norms = self._normalize(x)
        return self._unnormalize(self.decode(self.encode_raw(xn)), norms)

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ReLUSAE(_Dictionary):
    """ReLUSAE (and the first release's AutoEncoder, same tensors, without the rescale buffer)."""

    def __init__(self, d_in: int, d_sae: int, sqrt_d: bool = False, first_release: bool = False) -> None:
        super().__init__(d_in, d_sae, sqrt_d)
        self.bias = nn.Parameter(torch.zeros(d_in))
        self.encoder = nn.Linear(d_in, d_sae, bias=True)
        self.decoder = nn.Linear(d_sae, d_in, bias=False)
        if not first_release:
            self.add_rescale_buffer()
        self.first_release = first_release

    def state_dict(self, *args, **kwargs):
        if self.first_release:  # that release's Dictionary saved no flag
            return nn.Module.state_dict(self, *args, **kwargs)
        return super().state_dict(*args, **kwargs)

    def encode_raw(self, x):
        return torch.relu(self.encoder(x - self.bias))

    def decode(self, f):
        return self.decoder(f) + self.bias


class ReLUSAETied(_Dictionary):
    def __init__(self, d_in: int, d_sae: int, sqrt_d: bool = False) -> None:
        super().__init__(d_in, d_sae, sqrt_d)
        self.encoder = nn.Linear(d_in, d_sae, bias=True)
        self.decoder = nn.Linear(d_sae, d_in, bias=True)
        self.add_rescale_buffer()

    def encode_raw(self, x):
        return torch.relu(self.encoder(x))

    def decode(self, f):
        return self.decoder(f)


class JumpReLUSAE(_Dictionary):
    def __init__(self, d_in: int, d_sae: int, sqrt_d: bool = False) -> None:
        super().__init__(d_in, d_sae, sqrt_d)
        self.encoder = nn.Linear(d_in, d_sae, bias=True)
        self.decoder = nn.Linear(d_sae, d_in, bias=True)
        self.threshold = nn.Parameter(torch.ones(d_sae) * 0.001)
        self.add_rescale_buffer()

    def encode_raw(self, x):
        pre = self.encoder(x)  # apply_b_dec_to_input is False in their class
        return torch.relu(pre * (pre > self.threshold))

    def decode(self, f):
        return self.decoder(f)


class JumpReLUSAEv1(_Dictionary):
    """v1.0.0's JumpReLUSAE: raw parameters W_enc [D, F], W_dec [F, D]."""

    def __init__(self, d_in: int, d_sae: int, sqrt_d: bool = False) -> None:
        super().__init__(d_in, d_sae, sqrt_d)
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.threshold = nn.Parameter(torch.ones(d_sae) * 0.001)
        self.add_rescale_buffer()

    def encode_raw(self, x):
        pre = x @ self.W_enc + self.b_enc
        return torch.relu(pre * (pre > self.threshold))

    def decode(self, f):
        return f @ self.W_dec + self.b_dec


class TopKSAE(_Dictionary):
    def __init__(self, d_in: int, d_sae: int, k: int, sqrt_d: bool = False) -> None:
        super().__init__(d_in, d_sae, sqrt_d)
        self.register_buffer("k", torch.tensor(k, dtype=torch.int))
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float32))
        self.decoder = nn.Linear(d_sae, d_in, bias=False)
        self.encoder = nn.Linear(d_in, d_sae)
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.add_rescale_buffer()

    def encode_raw(self, x):
        post_relu = torch.relu(self.encoder(x - self.b_dec))
        top = post_relu.topk(int(self.k), sorted=False, dim=-1)
        return torch.zeros_like(post_relu).scatter_(-1, top.indices, top.values)

    def decode(self, f):
        return self.decoder(f) + self.b_dec


class BatchTopKSAE(TopKSAE):
    def encode_raw(self, x):  # their encode(use_threshold=True), the inference default
        post_relu = torch.relu(self.encoder(x - self.b_dec))
        return post_relu * (post_relu > self.threshold)


@torch.no_grad()
def randomise(sae: nn.Module, seed: int) -> nn.Module:
    """Random weights and non-zero biases everywhere (their inits zero most biases)."""
    g = torch.Generator().manual_seed(seed)
    for name, param in sae.named_parameters():
        if name.endswith("threshold"):
            param.copy_(torch.rand(param.shape, generator=g) * 0.4)
        else:
            param.copy_(torch.randn(param.shape, generator=g) * (0.3 if param.dim() == 2 else 0.2))
    if isinstance(sae, BatchTopKSAE):
        sae.threshold.fill_(0.15)
    elif isinstance(sae, TopKSAE):
        sae.threshold.fill_(0.07)  # trained too, but their forward does not use it
    return sae


@torch.no_grad()
def kill(sae: nn.Module, features: list[int]) -> None:
    """Make `features` never fire (as features whose max over their data set is 0)."""
    if hasattr(sae, "W_enc"):
        sae.W_enc[:, features] = 0.0
        sae.b_enc[features] = -5.0
    else:
        sae.encoder.weight[features] = 0.0
        sae.encoder.bias[features] = -5.0


@torch.no_grad()
def normalise(sae: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Their normalize.py: activation_rescale_factor = max activation per feature over the data (0 if never
    active). Returns the factor."""
    xn, _ = sae._normalize(x)
    max_per_feature = sae.encode_raw(xn).reshape(-1, sae.d_sae).max(dim=0).values.clamp_min(0)
    sae.activation_rescale_factor = max_per_feature
    return max_per_feature


@torch.no_grad()
def first_release_normalise(sae: ReLUSAE, x: torch.Tensor) -> torch.Tensor:
    """The first release's normalize.py: the max folded into the weights (a dead feature's encoder row is
    divided by 0)."""
    max_per_feature = sae.encode_raw(x).reshape(-1, sae.d_sae).max(dim=0).values
    sae.encoder.weight.div_(max_per_feature.unsqueeze(1))
    sae.encoder.bias.div_(max_per_feature)
    sae.decoder.weight.mul_(max_per_feature.unsqueeze(0))
    return max_per_feature
