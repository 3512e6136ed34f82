"""Shared by the steering tests and bench/steer.py: an SAE with a planted direction in a tiny ESM-2.

The planted feature's decoder row is the direction, at the SAE's layer, that most raises the log
probability of chosen residues (the gradient of their summed log-probabilities over real Swiss-Prot
sequences, with respect to a vector added at every residue), so clamping it high must move those
residues up. The other features are random.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sae.model import create_sae
from sae.steer import layer_module, tokenize

PLANTED_FEATURE = 0


def planted_direction(plm, layer: int, sequences: Sequence[str], residues: str) -> torch.Tensor:
    """Unit vector at `layer` along which log p(residues) rises most, averaged over `sequences`."""
    model, alphabet = plm.model, plm.alphabet
    module, pre = layer_module(model, layer)
    shift = torch.zeros(model.embed_dim, requires_grad=True)

    def add(x: torch.Tensor) -> torch.Tensor:
        return x + shift.to(x.dtype)

    if pre:
        handle = module.register_forward_pre_hook(lambda _m, args: (add(args[0]), *args[1:]))
    else:
        handle = module.register_forward_hook(
            lambda _m, _a, out: (add(out[0]), *out[1:]) if isinstance(out, tuple) else add(out))
    ids = [alphabet.get_idx(r) for r in residues]
    try:
        total = torch.zeros(())
        for sequence in sequences:
            logits = model(tokenize(alphabet, sequence).to(plm.device))["logits"][0, 1:-1]
            total = total + torch.log_softmax(logits.float(), -1)[:, ids].sum()
        (grad,) = torch.autograd.grad(total, shift)
    finally:
        handle.remove()
    return grad / grad.norm()


def planted_sae(plm, layer: int, sequences: Sequence[str], residues: str = "W", d_sae: int = 16,
                architecture: str = "relu", seed: int = 0, **cfg):
    """An SAE over `layer` of `plm` whose feature PLANTED_FEATURE writes the planted direction."""
    torch.manual_seed(seed)
    sae = create_sae(architecture, plm.embed_dim, d_sae, **cfg)
    direction = planted_direction(plm, layer, sequences, residues)
    with torch.no_grad():
        sae.W_dec[PLANTED_FEATURE] = direction
        sae.W_enc[:, PLANTED_FEATURE] = direction
        sae.b_enc.fill_(-0.1)
    return sae.eval()
