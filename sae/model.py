"""SAE base class, config, registry and save/load in SAELens's on-disk layout.

A saved SAE is a folder with two files, loadable by SAELens 6.x's `SAE.load_from_disk` as well as by
`load_sae` (sae/saelens_layout.py says how one file serves both):

    cfg.json                  SAEConfig as JSON (plmlabel_architecture, d_in, d_sae, k, dtype,
                              normalization, norm_scale, plm_model, layer, format_version, plus
                              architecture fields) and the SAELens keys (architecture,
                              normalize_activations, apply_b_dec_to_input, metadata, ...)
    sae_weights.safetensors   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in],
                              threshold [d_sae] (jumprelu, batchtopk); from format 2 on, a `scale`
                              normalisation is folded into W_enc, W_dec and b_dec

Every SAE takes RAW per-residue embeddings (exactly as the embed step stores them): `encode` applies
the SAE's own input normalisation (`cfg.normalization`) and `decode` undoes it, so callers never care how
an SAE was trained or where it came from. Architectures subclass `SAE` in sae/architectures/, one file
each; `REGISTRY` maps the architecture key to its (config class, model class).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from sae.plm_keys import plm_model_key  # noqa: F401  (importable from here as before)
from sae.saelens_layout import OUR_ARCHITECTURE_KEY, cfg_for_saving, fold_scale, ours_from_saved, unfold_scale
from storage.errors import InputError, NotFoundError
from storage.paths import stored_path
from storage.saes import SaeRecord, list_saes, record_sae
from storage.workspace import Workspace

FORMAT_VERSION = 2  # 2: SAELens-readable cfg.json, `scale` folded into the weights
CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"

Normalization = Literal["none", "scale", "layer_norm", "unit_norm"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
LAYER_NORM_EPS = 1e-5  # InterProt's and SAELens's `layer_norm`: (x - mean) / (std + eps), unbiased std
UNIT_NORM_EPS = 1e-8

# Keys older cfg.json files (and SAELens ones) used for our fields.
_LEGACY_KEYS = {
    "normalize_activations": "normalization",
    "model_name": "plm_model",
    "hook_layer": "layer",
}


class SAEConfig(BaseModel):
    """What an SAE is, as stored in cfg.json. Unknown keys are ignored; old keys are upgraded.

    normalization (applied inside `encode`, undone inside `decode`):
      none        raw embeddings go straight in
      scale       x * norm_scale (one number, e.g. chosen so that the mean token norm is sqrt(d_in))
      layer_norm  per token: (x - mean) / (std + 1e-5), std unbiased (InterProt, SAELens `layer_norm`)
      unit_norm   per token: x / |x| * sqrt(d_in) (InterPLM `normalize_to_sqrt_d`, SAELens
                  `constant_norm_rescale`)
    """

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    architecture: str
    d_in: int = Field(gt=0)
    d_sae: int = Field(gt=0)
    k: int | None = Field(None, gt=0)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    normalization: Normalization = "none"
    norm_scale: float | None = Field(None, gt=0)
    plm_model: str | None = None
    layer: int | None = Field(None, ge=0)
    format_version: int = FORMAT_VERSION
    # Free-form provenance: how it was trained (tokens, hyperparameters, held-out rule) or imported.
    training: dict[str, Any] | None = None
    source: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in _LEGACY_KEYS.items():
            if old in data and new not in data:
                data[new] = data.pop(old)
        if data.get("normalization") is None:
            data["normalization"] = "none"
        data.setdefault("format_version", FORMAT_VERSION)
        return data

    @model_validator(mode="after")
    def _check(self) -> SAEConfig:
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is newer than this plmlabel ({FORMAT_VERSION})"
            )
        return self


@dataclass
class NormState:
    """What one `normalize` call needs to map a reconstruction back: raw = y * out_scale + shift."""

    shift: torch.Tensor | None = None
    out_scale: torch.Tensor | float | None = None


@dataclass
class SAEOutput:
    recon: torch.Tensor  # reconstruction in the raw embedding space
    feats: torch.Tensor  # feature activations

    def __iter__(self) -> Iterator[torch.Tensor]:  # so `recon, feats = sae(x)` works
        yield self.recon
        yield self.feats


@dataclass
class TrainStep:
    """What one training forward pass returns to the trainer (all in the normalised space)."""

    loss: torch.Tensor
    recon: torch.Tensor
    feats: torch.Tensor
    parts: dict[str, float]


@dataclass
class TrainContext:
    """What the trainer tells an architecture at each step."""

    dead_mask: torch.Tensor | None = None  # [d_sae] features silent for too long
    l1_coefficient: float = 0.0
    l0_coefficient: float = 0.0
    aux_k_coefficient: float = 1.0 / 32.0


class SAE(nn.Module, ABC):
    """A sparse autoencoder over one ESM-2 layer. Subclasses define the activation and the loss."""

    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    # SAELens's name for the inference class that computes what this architecture computes
    saelens_architecture: ClassVar[str]

    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dtype = DTYPES[cfg.dtype]
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, dtype=torch.float32)
        w_dec /= w_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec.to(dtype))
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous().to(dtype))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))

    # --- shape -----------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def architecture(self) -> str:
        return self.cfg.architecture

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    # --- input normalisation ---------------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
        """Raw embeddings -> the space the SAE works in, and what is needed to go back."""
        if x.shape[-1] != self.d_in:
            raise InputError(
                f"the SAE expects embeddings of width {self.d_in}, got width {x.shape[-1]}; "
                "it was made for another model or layer."
            )
        x = x.to(self.W_enc.dtype)
        mode = self.cfg.normalization
        if mode == "none":
            return x, NormState()
        if mode == "scale":
            if self.cfg.norm_scale is None:
                raise ValueError("normalization 'scale' needs cfg.norm_scale (set it before training)")
            return x * self.cfg.norm_scale, NormState(out_scale=1.0 / self.cfg.norm_scale)
        if mode == "layer_norm":
            # As InterProt and SAELens: divide by (std + eps), multiply back by std alone.
            mu = x.mean(dim=-1, keepdim=True)
            centred = x - mu
            std = centred.std(dim=-1, keepdim=True)
            return centred / (std + LAYER_NORM_EPS), NormState(shift=mu, out_scale=std)
        if mode == "unit_norm":
            norm = x.norm(dim=-1, keepdim=True).clamp_min(UNIT_NORM_EPS)
            root_d = math.sqrt(self.d_in)
            return x / norm * root_d, NormState(out_scale=norm / root_d)
        raise ValueError(f"unknown normalization {mode!r}")

    def denormalize(self, y: torch.Tensor, state: NormState | None) -> torch.Tensor:
        """Map a reconstruction from the SAE's space back to the raw embedding space."""
        mode = self.cfg.normalization
        if mode == "none":
            return y
        if mode == "scale":
            return y / self.cfg.norm_scale  # type: ignore[operator]
        if state is None or state.out_scale is None:
            raise ValueError(
                f"this SAE normalises each token ({mode}); decode(f, state) needs the NormState "
                "from normalize(x), or use forward(x)"
            )
        y = y * state.out_scale
        return y + state.shift if state.shift is not None else y

    # --- the model ---------------------------------------------------------------------------------
    def pre_activation(self, xn: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations from normalised input: (xn - b_dec) @ W_enc + b_enc.

        Computed as xn @ W_enc + (b_enc - b_dec @ W_enc): the same value, but b_dec's gradient then
        needs a vector-matrix product instead of the [tokens, d_in] input gradient (a sixth of a
        training step's matmul FLOPs).
        """
        return xn @ self.W_enc + (self.b_enc - self.b_dec @ self.W_enc)

    @abstractmethod
    def activation(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        """Inference activation: pre-activations -> feature activations."""

    def decode_normalized(self, feats: torch.Tensor) -> torch.Tensor:
        return feats @ self.W_dec + self.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """RAW embeddings [..., d_in] -> feature activations [..., d_sae]."""
        xn, _ = self.normalize(x)
        return self.activation(self.pre_activation(xn))

    def decode(self, feats: torch.Tensor, state: NormState | None = None) -> torch.Tensor:
        """Feature activations -> reconstruction in the RAW embedding space.

        SAEs with a per-token normalisation (layer_norm, unit_norm) need the `state` returned by
        `normalize` on the same tokens; `forward` handles that.
        """
        return self.denormalize(self.decode_normalized(feats), state)

    def forward(self, x: torch.Tensor) -> SAEOutput:
        xn, state = self.normalize(x)
        feats = self.activation(self.pre_activation(xn))
        return SAEOutput(recon=self.denormalize(self.decode_normalized(feats), state), feats=feats)

    # --- training hooks ------------------------------------------------------------------------
    @abstractmethod
    def training_step(self, xn: torch.Tensor, ctx: TrainContext) -> TrainStep:
        """Loss on one normalised batch [B, d_in]; the trainer calls backward on `.loss`."""

    def after_step(self, step: TrainStep) -> None:
        """Called after each optimizer step (BatchTopK updates its inference threshold here)."""

    @staticmethod
    def mse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Squared error summed over the embedding dimension, mean over tokens."""
        return (recon - target).pow(2).sum(dim=-1).mean()

    @torch.no_grad()
    def set_decoder_norm_to_unit(self) -> None:
        self.W_dec.data /= self.W_dec.data.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder(self) -> None:
        """Project out the part of W_dec's gradient that would change the rows' norms."""
        if self.W_dec.grad is None:
            return
        unit = self.W_dec.data / self.W_dec.data.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        parallel = (self.W_dec.grad * unit).sum(dim=-1, keepdim=True)
        self.W_dec.grad -= parallel * unit

    # --- (de)serialisation ------------------------------------------------------------------------
    def saelens_fields(self) -> dict[str, Any]:
        """cfg.json keys SAELens's config class for `saelens_architecture` reads beyond the common ones."""
        return {}

    def weights_for_saving(self) -> dict[str, torch.Tensor]:
        """The tensors written to sae_weights.safetensors, under SAELens's names."""
        state = {name: t.detach().contiguous() for name, t in self.state_dict().items()}
        return self._to_saved(state)

    def _to_saved(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Convert internal tensors to the saved form (e.g. log thresholds -> thresholds)."""
        return state

    def _from_saved(self, saved: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inverse of `_to_saved`."""
        return saved

    def load_saved_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load tensors in the saved form; InputError on missing or mis-shaped ones."""
        expected = self.weights_for_saving()
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise InputError(f"the weights lack {', '.join(missing)} for a {self.architecture} SAE.")
        for name, value in expected.items():
            if tuple(tensors[name].shape) != tuple(value.shape):
                raise InputError(
                    f"weight {name} has shape {tuple(tensors[name].shape)}, expected {tuple(value.shape)} "
                    f"for d_in={self.d_in}, d_sae={self.d_sae}."
                )
            if not torch.isfinite(tensors[name].float()).all():
                raise InputError(f"weight {name} contains NaN or infinite values.")
        own = self.state_dict()
        state = self._from_saved({name: tensors[name] for name in expected})
        self.load_state_dict({n: v.to(own[n].dtype) for n, v in state.items()}, strict=False)


# --- registry ----------------------------------------------------------------------------------------

RegistryEntry = tuple[type[SAEConfig], type[SAE]]


class Registry(Mapping[str, RegistryEntry]):
    """Architecture key -> (config class, model class). Refuses duplicates.

    Filled from an explicit list of entries on first use (the architecture modules import this one, so
    the list is read lazily rather than at import time; nothing registers itself as a side effect).
    """

    def __init__(self, entries: Callable[[], Iterable[tuple[str, type[SAEConfig], type[SAE]]]]) -> None:
        self._entries = entries
        self._table: dict[str, RegistryEntry] | None = None

    def _loaded(self) -> dict[str, RegistryEntry]:
        if self._table is None:
            self._table = {}
            for key, cfg_class, model_class in self._entries():
                self.register(key, cfg_class, model_class)
        return self._table

    def register(self, key: str, cfg_class: type[SAEConfig], model_class: type[SAE]) -> None:
        table = self._loaded()
        if key in table:
            raise ValueError(f"SAE architecture {key!r} is already registered")
        table[key] = (cfg_class, model_class)

    def __getitem__(self, key: str) -> RegistryEntry:
        table = self._loaded()
        if key not in table:
            raise InputError(
                f"unknown SAE architecture {key!r}; known: {', '.join(sorted(table))}."
            )
        return table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def __contains__(self, key: object) -> bool:
        return key in self._loaded()


def _builtin_architectures() -> list[tuple[str, type[SAEConfig], type[SAE]]]:
    from sae.architectures import batchtopk, jumprelu, relu, topk

    return [
        ("relu", relu.ReLUConfig, relu.ReLUSAE),
        ("topk", topk.TopKConfig, topk.TopKSAE),
        ("batchtopk", batchtopk.BatchTopKConfig, batchtopk.BatchTopKSAE),
        ("jumprelu", jumprelu.JumpReLUConfig, jumprelu.JumpReLUSAE),
    ]


REGISTRY = Registry(_builtin_architectures)


def config_from_dict(data: dict[str, Any]) -> SAEConfig:
    """Validate a cfg dict with its architecture's config class (unknown keys ignored)."""
    architecture = data.get("architecture")
    if not isinstance(architecture, str):
        raise InputError("the SAE config has no 'architecture'.")
    cfg_class, _ = REGISTRY[architecture]
    try:
        return cfg_class.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise InputError(f"bad SAE config: {where}: {first['msg']}.") from exc


def sae_from_config(cfg: SAEConfig) -> SAE:
    _, model_class = REGISTRY[cfg.architecture]
    return model_class(cfg)


def create_sae(architecture: str, d_in: int, d_sae: int, **kwargs: Any) -> SAE:
    """A freshly initialised SAE: `create_sae("topk", 320, 4096, k=32, plm_model=..., layer=...)`."""
    return sae_from_config(config_from_dict({"architecture": architecture, "d_in": d_in, "d_sae": d_sae,
                                             **kwargs}))


# --- save / load -------------------------------------------------------------------------------------


def save_sae(sae: SAE, directory: str | os.PathLike[str]) -> Path:
    """Write cfg.json and sae_weights.safetensors into `directory` (created; files replaced atomically)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.cpu() for name, t in sae.weights_for_saving().items()}
    if sae.cfg.normalization == "scale":
        if sae.cfg.norm_scale is None:
            raise ValueError("normalization 'scale' needs cfg.norm_scale before the SAE can be saved")
        tensors = fold_scale(tensors, sae.cfg.norm_scale)
    weights_tmp = directory / (WEIGHTS_FILENAME + ".tmp")
    save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
    cfg_tmp = directory / (CFG_FILENAME + ".tmp")
    cfg_tmp.write_text(json.dumps(cfg_for_saving(sae, FORMAT_VERSION), indent=2, sort_keys=True))
    os.replace(weights_tmp, directory / WEIGHTS_FILENAME)
    os.replace(cfg_tmp, directory / CFG_FILENAME)
    return directory


def read_config(directory: str | os.PathLike[str]) -> SAEConfig:
    path = Path(directory) / CFG_FILENAME
    if not path.exists():
        raise NotFoundError(f"no SAE at {Path(directory)} (missing {CFG_FILENAME}).")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}.") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path} does not hold a JSON object.")
    data.setdefault("format_version", 1)  # files from before format_version was written
    architecture = data.get("architecture")
    if OUR_ARCHITECTURE_KEY not in data and isinstance(architecture, str) and architecture not in REGISTRY:
        raise InputError(
            f"{path} was not saved by plmlabel (architecture {architecture!r}, no "
            f"{OUR_ARCHITECTURE_KEY}); import it with `plmlabel sae import --format saelens`."
        )
    return config_from_dict(ours_from_saved(data))


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; InputError if it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"no weights file at {path}.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable safetensors file: {exc}.") from exc


def load_sae(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> SAE:
    """Load an SAE saved by `save_sae` (or any folder in that layout), in eval mode."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotFoundError(f"no SAE folder at {directory}.")
    cfg = read_config(directory)
    tensors = read_weights(directory / WEIGHTS_FILENAME)
    if cfg.format_version >= 2 and cfg.normalization == "scale" and cfg.norm_scale is not None:
        tensors = unfold_scale(tensors, cfg.norm_scale)
    cfg.format_version = FORMAT_VERSION  # the SAE in memory is in today's form, whatever the file was
    sae = sae_from_config(cfg)
    sae.load_saved_weights(tensors)
    return sae.to(device).eval()


def weights_hash(directory: str | os.PathLike[str]) -> str:
    """sha256 of the weights file: an index built from other weights carries another hash."""
    path = Path(directory) / WEIGHTS_FILENAME
    if not path.exists():
        raise NotFoundError(f"no weights file at {path}.")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def install_sae(sae: SAE, target: str | os.PathLike[str]) -> Path:
    """Save into a temporary sibling folder, then rename it to `target` (replacing an old one).

    Nothing at `target` ever looks finished before both files are complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_sae(sae, tmp)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


# --- fitting an SAE to an ESM-2 layer ------------------------------------------------------------------


def check_fits_layer(cfg: SAEConfig, model: str | None, layer: int | None,
                     width: int | None = None) -> None:
    """InputError unless the SAE's d_in is the width of `model`'s `layer` (known hub models, or `width`
    as read from the workspace's embeddings); also checks the layer exists for hub models."""
    from sae.plm import ESM2_MODELS

    spec = ESM2_MODELS.get(model) if model else None
    if spec is not None and layer is not None and not 0 <= layer <= spec.num_layers:
        raise InputError(f"layer {layer} is out of range: {spec.name} has layers 0..{spec.num_layers}.")
    expected = spec.embed_dim if spec is not None else width
    if expected is not None and cfg.d_in != expected:
        where = f"{model} layer {layer}" if layer is not None else str(model)
        raise InputError(
            f"the SAE has d_in={cfg.d_in} but {where} has width {expected}; "
            "it was trained on another model."
        )


# --- workspace SAEs ---------------------------------------------------------------------------------------

_SAE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_sae_id(sae_id: str) -> str:
    if not _SAE_ID.match(sae_id):
        raise InputError(
            f"{sae_id!r} is not a usable SAE name: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit (at most 100 characters)."
        )
    return sae_id


def refuse_existing(workspace: Workspace, sae_id: str, force: bool) -> None:
    """InputError if `sae_id` is taken (recorded or its folder exists) and `force` is off."""
    with workspace.db() as db:
        taken = any(record.sae_id == sae_id for record in list_saes(db))
    if (taken or workspace.sae_dir(sae_id).exists()) and not force:
        raise InputError(f"an SAE named {sae_id!r} already exists; choose another name or pass --force.")


def install_and_record(workspace: Workspace, sae_id: str, sae: SAE, *, source: str,
                       metrics: dict[str, Any] | None = None) -> SaeRecord:
    """Write the SAE to `saes/<sae_id>/` (atomically) and upsert its row in the `saes` table."""
    target = install_sae(sae, workspace.sae_dir(check_sae_id(sae_id)))
    cfg = sae.cfg
    record = SaeRecord(
        sae_id=sae_id, architecture=cfg.architecture, d_in=cfg.d_in, d_sae=cfg.d_sae, k=cfg.k,
        plm_model=cfg.plm_model, layer=cfg.layer, path=stored_path(target, workspace.root),
        weights_hash=weights_hash(target),
        source=source, cfg=cfg.model_dump(mode="json"), metrics=metrics,
    )
    try:
        with workspace.db() as db:
            record_sae(db, record)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # no folder left that the table does not know
        raise
    return record
