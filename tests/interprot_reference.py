"""InterProt's SAE and its Lightning checkpoint rebuilt for tests, written by us from reading
interprot/sae_model.py, sae_module.py and training.py (github.com/etowahadams/interprot; not on a registry).

`SparseAutoencoder` has their parameter names and shapes (w_enc [D, F], w_dec [F, D], b_enc, b_pre, the
stats_last_nonzero buffer) and their inference math (get_acts / forward_val). `lightning_checkpoint` is
the dict Lightning 2.x's checkpoint connector saves for their SAELightningModule: the module's state dict
(the SAE under `sae_model.`), hyper_parameters {"args": argparse.Namespace} from save_hyperparameters(),
optimizer, loop and ModelCheckpoint states. Lightning itself is not needed to write it.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn


class SparseAutoencoder(nn.Module):
    def __init__(self, d_model: int, d_hidden: int, k: int = 128) -> None:
        super().__init__()
        self.w_enc = nn.Parameter(torch.empty(d_model, d_hidden))
        self.w_dec = nn.Parameter(torch.empty(d_hidden, d_model))
        self.b_enc = nn.Parameter(torch.zeros(d_hidden))
        self.b_pre = nn.Parameter(torch.zeros(d_model))
        self.k = k
        nn.init.kaiming_uniform_(self.w_enc, a=math.sqrt(5))
        self.w_dec.data = self.w_enc.data.T.clone()
        self.w_dec.data /= self.w_dec.data.norm(dim=0)
        self.register_buffer("stats_last_nonzero", torch.zeros(d_hidden, dtype=torch.long))

    @staticmethod
    def layer_norm(x: torch.Tensor, eps: float = 1e-5):
        mu = x.mean(dim=-1, keepdim=True)
        x = x - mu
        std = x.std(dim=-1, keepdim=True)
        return x / (std + eps), mu, std

    def topk(self, pre: torch.Tensor) -> torch.Tensor:
        top = torch.topk(pre, k=self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))

    @torch.no_grad()
    def get_acts(self, x: torch.Tensor) -> torch.Tensor:
        xn, _, _ = self.layer_norm(x)
        return self.topk((xn - self.b_pre) @ self.w_enc + self.b_enc)

    @torch.no_grad()
    def forward_val(self, x: torch.Tensor) -> torch.Tensor:
        xn, mu, std = self.layer_norm(x)
        latents = self.topk((xn - self.b_pre) @ self.w_enc + self.b_enc)
        return (latents @ self.w_dec + self.b_pre) * std + mu


@torch.no_grad()
def randomised(d_model: int, d_hidden: int, k: int, seed: int = 3) -> SparseAutoencoder:
    torch.manual_seed(seed)
    sae = SparseAutoencoder(d_model, d_hidden, k)
    sae.b_enc.normal_(0, 0.2)
    sae.b_pre.normal_(0, 0.2)
    sae.w_dec.add_(torch.randn_like(sae.w_dec) * 0.05)
    sae.stats_last_nonzero.random_(0, 50)
    return sae


class SAELightningModule(nn.Module):
    """Only what shapes the saved state dict: the SAE as `sae_model`."""

    def __init__(self, sae: SparseAutoencoder) -> None:
        super().__init__()
        self.sae_model = sae


def training_args(d_model: int, d_hidden: int, k: int, layer: int) -> argparse.Namespace:
    """training.py's argparse Namespace (its defaults, with our sizes)."""
    return argparse.Namespace(
        data_dir="data/uniref50_1M_1022.parquet", esm2_weight="weights/esm2_t33_650M_UR50D.pt",
        layer_to_use=layer, d_model=d_model, d_hidden=d_hidden, batch_size=48, lr=2e-4, k=k, auxk=256,
        dead_steps_threshold=2000, max_epochs=1, num_devices=1, model_suffix="", wandb_project="interprot",
        num_workers=None, output_dir=f"results_l{layer}_dim{d_hidden}_k{k}_auxk256_",
    )


def lightning_checkpoint(sae: SparseAutoencoder, args: argparse.Namespace, step: int = 40) -> dict:
    module = SAELightningModule(sae)
    params = list(module.parameters())
    adamw = {  # AdamW.state_dict() after some steps (written out: torch.optim is slow to import)
        "state": {i: {"step": torch.tensor(float(step)), "exp_avg": torch.zeros_like(p),
                      "exp_avg_sq": torch.zeros_like(p)} for i, p in enumerate(params)},
        "param_groups": [{"lr": args.lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01,
                          "amsgrad": False, "foreach": None, "maximize": False, "capturable": False,
                          "differentiable": False, "fused": None, "params": list(range(len(params)))}],
    }
    monitor = "ModelCheckpoint{'monitor': 'train_loss', 'mode': 'min', 'every_n_train_steps': 0, " \
              "'every_n_epochs': 1, 'train_time_interval': None}"
    progress = {"total": {"ready": step, "completed": step}, "current": {"ready": step, "completed": step}}
    return {
        "epoch": 0,
        "global_step": step,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": module.state_dict(),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": step},
                               "epoch_loop.batch_progress": progress}},
        "callbacks": {monitor: {"monitor": "train_loss", "best_model_score": torch.tensor(0.41),
                                "best_model_path": "results/checkpoints/x.ckpt", "current_score":
                                torch.tensor(0.41), "dirpath": "results/checkpoints", "best_k_models":
                                {"results/checkpoints/x.ckpt": torch.tensor(0.41)}, "kth_best_model_path":
                                "results/checkpoints/x.ckpt", "kth_value": torch.tensor(0.41),
                                "last_model_path": "results/checkpoints/last.ckpt"}},
        "optimizer_states": [adamw],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"args": args},
    }
