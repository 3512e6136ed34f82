"""ESM-2 through fair-esm: load by hub name or local checkpoint, and per-residue embeddings of one layer.

Layers: layer 0 is the token-embedding output (after ESM-2's token-dropout rescaling, as fair-esm
returns it for `repr_layers=[0]`); layer i in 1..L-1 is the residual stream after transformer block i;
layer L (the last) is, as in fair-esm, the output of block L *after* the final `emb_layer_norm_after`
(fair-esm applies that norm to the last layer's representation only). BOS/EOS rows are stripped.

Long proteins: ESM-2 saw at most 1,022 residues (+BOS/EOS) in training, so a longer protein is cut into
windows of `window` residues overlapping by `overlap`; each window is embedded as its own sequence (with
its own BOS/EOS) and every residue is taken from the window in which it lies farthest from a cut
(for two neighbouring windows: the cut is the midpoint of their overlap). Every residue then has at least
`overlap // 2` residues of context on a cut side, and the result has exactly one row per residue.
The last window is aligned to the protein's end, so it may overlap its neighbour by more.

Residues: the 20 standard amino acids and U, O, B, Z, X are each their own token in ESM's alphabet (as
fair-esm tokenises them); lowercase is uppercased; anything else is an InputError naming the protein.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from argparse import Namespace
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from storage.errors import InputError, NotFoundError

MAX_RESIDUES = 1022  # ESM-2's training context: 1,024 tokens with BOS and EOS
WINDOW_OVERLAP = 256
RESIDUES = "ACDEFGHIKLMNPQRSTVWY" + "UOBZX"
_INVALID = re.compile(f"[^{RESIDUES}]")
_REGRESSION_KEYS = ("contact_head.regression.weight", "contact_head.regression.bias")
_HUB_URL = "https://dl.fbaipublicfiles.com/fair-esm"


@dataclass(frozen=True)
class PLMSpec:
    """A released ESM-2 model: its hub name and shape."""

    name: str
    num_layers: int
    embed_dim: int
    attention_heads: int
    params: str


ESM2_MODELS: dict[str, PLMSpec] = {
    spec.name: spec
    for spec in (
        PLMSpec("esm2_t6_8M_UR50D", 6, 320, 20, "8M"),
        PLMSpec("esm2_t12_35M_UR50D", 12, 480, 20, "35M"),
        PLMSpec("esm2_t30_150M_UR50D", 30, 640, 20, "150M"),
        PLMSpec("esm2_t33_650M_UR50D", 33, 1280, 20, "650M"),
        PLMSpec("esm2_t36_3B_UR50D", 36, 2560, 40, "3B"),
        PLMSpec("esm2_t48_15B_UR50D", 48, 5120, 40, "15B"),
    )
}


@dataclass
class LoadedPLM:
    """An ESM-2 in eval mode on its device, with what is needed to feed it."""

    model: Any  # esm.model.esm2.ESM2
    alphabet: Any  # esm.data.Alphabet
    batch_converter: Any  # esm.data.BatchConverter
    name: str  # the hub name, or the checkpoint's absolute path
    num_layers: int
    embed_dim: int
    device: torch.device
    dtype: torch.dtype


# --- device and dtype ------------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else CPU; `cuda` without a GPU is an InputError."""
    device = (device or "auto").strip().lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", device):
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} was asked for but this machine has no CUDA GPU.")
        return torch.device(device)
    raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N.")


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
           "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is fp32 on CPU and fp16 on CUDA (ESM-2 was trained in fp16); half precision needs CUDA."""
    dtype = (dtype or "auto").strip().lower()
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16.")
    if _DTYPES[dtype] != torch.float32 and device.type != "cuda":
        raise InputError(f"dtype {dtype} needs a CUDA device; on {device.type} use fp32.")
    return _DTYPES[dtype]


# --- loading -----------------------------------------------------------------------------------------
def _load_file(path: Path) -> dict:
    """torch.load a fair-esm checkpoint the user pointed at.

    torch >= 2.6 loads with weights_only=True and refuses fair-esm files because they pickle an
    argparse.Namespace (the model config). We keep weights_only=True and allow exactly that one class
    for this call (a scoped safe_globals, not a process-wide add_safe_globals): a Namespace of plain
    values cannot run code, whereas weights_only=False would let any file on disk execute code.
    """
    try:
        with torch.serialization.safe_globals([Namespace]):
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise InputError(
                f"{path} pickles {refused.group(1)}, which plmlabel will not unpickle (it loads checkpoints "
                "with weights_only=True); save the checkpoint with plain values and an argparse.Namespace."
            ) from exc
        # not torch's own advice: it suggests weights_only=False, which would run any code in the file
        raise InputError(f"{path} is not a readable fair-esm checkpoint ({type(exc).__name__}).") from exc
    if not isinstance(data, dict) or "model" not in data:
        raise InputError(f"{path} is not a fair-esm checkpoint (expected a dict with 'model' and 'cfg').")
    return data


def _hub_cached(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def hub_weights_cached(name: str) -> bool:
    """Whether the weights of hub model `name` are in the torch hub cache (loadable offline)."""
    return name in ESM2_MODELS and _hub_cached(f"{_HUB_URL}/models/{name}.pt").exists()


def _hub_load(name: str, url: str) -> dict:
    """Load a file through fair-esm's hub loader: the torch hub cache, else a download into it.

    These files come from fair-esm's own URLs and are unpickled as fair-esm does it (torch.hub's
    weights_only=False); the scoped Namespace allowance covers fair-esm's plain torch.load fallback.
    torch.hub writes `Downloading: "<url>" to <path>` on stdout before it tries: swallowed here, so an
    offline attempt ends in our one message only and `--json` output stays JSON.
    """
    import esm.pretrained

    cached = _hub_cached(url)
    was_cached = cached.exists()
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([Namespace]), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return esm.pretrained.load_hub_workaround(url)
    except Exception as exc:  # URLError/OSError offline; fair-esm re-raises HTTP errors as bare Exception
        if was_cached:
            raise InputError(
                f"the cached weights of {name} at {cached} cannot be read ({_short(exc)}); "
                "delete the file to download it again."
            ) from exc
        raise NotFoundError(
            f"the weights of {name} are not in the torch hub cache ({cached}) and could not be "
            f"downloaded ({_short(exc)}); download {url} to that path or pass a local checkpoint path."
        ) from exc


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", "") or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _esm2_config(data: dict, where: str) -> Namespace:
    """The ESM-2 config of a checkpoint: `cfg["model"]` (v2 layout) or `args` if it describes an ESM-2."""
    if "cfg" in data:
        cfg = data["cfg"].get("model") if isinstance(data["cfg"], dict) else None
    elif "args" in data:
        cfg = data["args"]
        arch = getattr(cfg, "arch", None) if not isinstance(cfg, dict) else cfg.get("arch")
        if arch in ("roberta_large", "protein_bert_base", "msa_transformer") or "gvp" in str(arch):
            raise InputError(f"{where} is an ESM-1/MSA checkpoint (arch {arch}); plmlabel embeds with ESM-2.")
    else:
        cfg = None
    if isinstance(cfg, dict):
        cfg = Namespace(**cfg)
    needed = ("encoder_layers", "encoder_embed_dim", "encoder_attention_heads")
    if cfg is None or not all(hasattr(cfg, key) for key in needed):
        raise InputError(f"{where} has no ESM-2 config (cfg.model with {', '.join(needed)}).")
    if not hasattr(cfg, "token_dropout"):
        cfg.token_dropout = True  # every released ESM-2 was trained with token dropout
    return cfg


def _upgrade_keys(state: dict) -> dict:
    """fair-esm's v2 renaming: drop 'encoder.sentence_encoder.' / 'encoder.' prefixes."""
    pattern = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")
    return {pattern.sub("", key): value for key, value in state.items()}


def _check_shapes(cfg: Namespace, state: dict, where: str) -> None:
    """Compare a checkpoint's tensors with the ESM-2 its config describes; one clear error if they differ."""
    import esm
    from esm.model.esm2 import ESM2

    with torch.device("meta"):
        expected = ESM2(num_layers=cfg.encoder_layers, embed_dim=cfg.encoder_embed_dim,
                        attention_heads=cfg.encoder_attention_heads,
                        alphabet=esm.data.Alphabet.from_architecture("ESM-1b"),
                        token_dropout=cfg.token_dropout).state_dict()
    shape = f"an ESM-2 of {cfg.encoder_layers} layers x {cfg.encoder_embed_dim} dims"
    found = _upgrade_keys(state)
    for key, tensor in expected.items():
        if key not in found:
            if key in _REGRESSION_KEYS:
                continue
            raise InputError(f"{where} does not fit {shape}: tensor {key} is missing.")
        got = tuple(getattr(found[key], "shape", ()))
        if got != tuple(tensor.shape):
            raise InputError(
                f"{where} does not fit {shape}: {key} has shape {list(got)}, expected {list(tensor.shape)}."
            )
    extra = sorted(set(found) - set(expected))
    if extra:
        raise InputError(f"{where} does not fit {shape}: unexpected tensor {extra[0]}.")


def _build(data: dict, regression: dict | None, where: str, expect: PLMSpec | None):
    import esm.pretrained

    cfg = _esm2_config(data, where)
    if expect and (cfg.encoder_layers, cfg.encoder_embed_dim) != (expect.num_layers, expect.embed_dim):
        raise InputError(
            f"{where} holds an ESM-2 of {cfg.encoder_layers} layers x {cfg.encoder_embed_dim} dims, "
            f"but {expect.name} has {expect.num_layers} x {expect.embed_dim}."
        )
    if regression is not None and not all(k in regression.get("model", {}) for k in _REGRESSION_KEYS):
        regression = None  # not a contact-regression file: embeddings do not need it
    _check_shapes(cfg, {**data["model"], **(regression or {}).get("model", {})}, where)
    model_data = {"cfg": {"model": cfg}, "model": dict(data["model"])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Regression weights not found": contacts are not used here
        # the name only has to start with "esm2" to select fair-esm's ESM-2 loader
        return esm.pretrained.load_model_and_alphabet_core("esm2_checkpoint", model_data, regression)


def load_esm(name_or_path: str, device: str = "auto", dtype: str = "auto") -> LoadedPLM:
    """Load an ESM-2 by hub name (see ESM2_MODELS) or from a local fair-esm checkpoint (.pt).

    A local checkpoint's `<stem>-contact-regression.pt` is used when present and not required.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if name_or_path in ESM2_MODELS:
        spec = ESM2_MODELS[name_or_path]
        model_url = f"{_HUB_URL}/models/{spec.name}.pt"
        downloading = not _hub_cached(model_url).exists()
        data = _hub_load(spec.name, model_url)
        # the contact-regression file is optional here: fetched with the model, used when cached
        regression_url = f"{_HUB_URL}/regression/{spec.name}-contact-regression.pt"
        regression = None
        if downloading or _hub_cached(regression_url).exists():
            try:
                regression = _hub_load(spec.name, regression_url)
            except (InputError, NotFoundError):
                regression = None
        where, name = f"the cached weights of {spec.name}", spec.name
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            if "/" not in name_or_path and not name_or_path.endswith(".pt"):
                raise InputError(
                    f"unknown model {name_or_path!r}; use one of {', '.join(ESM2_MODELS)} "
                    "or the path of a fair-esm ESM-2 checkpoint."
                )
            raise NotFoundError(f"no checkpoint at {path}.")
        if not path.is_file():
            raise InputError(f"{path} is not a file; give the path of a fair-esm ESM-2 checkpoint (.pt).")
        path = path.resolve()
        data = _load_file(path)
        regression_path = path.with_name(path.stem + "-contact-regression.pt")
        regression = _load_file(regression_path) if regression_path.exists() else None
        spec = ESM2_MODELS.get(path.stem)
        where, name = str(path), str(path)
    model, alphabet = _build(data, regression, where, spec)
    model = model.eval().to(device=torch_device, dtype=torch_dtype)
    return LoadedPLM(model=model, alphabet=alphabet, batch_converter=alphabet.get_batch_converter(),
                     name=name, num_layers=model.num_layers, embed_dim=model.embed_dim,
                     device=torch_device, dtype=torch_dtype)


# --- tiny random models (tests and the offline demo) --------------------------------------------------
def make_random_esm2(num_layers: int = 2, embed_dim: int = 32, attention_heads: int = 4, seed: int = 0):
    """A randomly initialised fair-esm ESM2 (eval mode) and its alphabet; same seed, same weights."""
    import esm
    from esm.model.esm2 import ESM2

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ESM2(num_layers=num_layers, embed_dim=embed_dim, attention_heads=attention_heads,
                     alphabet=alphabet, token_dropout=True)
    return model.eval(), alphabet


def save_esm2_checkpoint(model: Any, path: str | Path, *, regression: bool = True) -> Path:
    """Write `model` as a released fair-esm ESM-2 checkpoint: {"cfg": {"model": Namespace}, "model": ...}.

    Keys carry the release's prefixes ("encoder.sentence_encoder." / "encoder.lm_head."), which
    fair-esm's loader strips. With `regression`, the contact-regression weights go to the sibling file
    `<stem>-contact-regression.pt`, as fair-esm ships them; otherwise they are left out.
    """
    path = Path(path)
    if path.suffix != ".pt":
        raise InputError(f"{path}: a fair-esm checkpoint name ends in .pt.")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}
    weights = {}
    for key, value in state.items():
        if key in _REGRESSION_KEYS:
            continue
        prefix = "encoder." if key.startswith("lm_head.") else "encoder.sentence_encoder."
        weights[prefix + key] = value
    cfg = Namespace(arch="esm2", encoder_layers=model.num_layers, encoder_embed_dim=model.embed_dim,
                    encoder_ffn_embed_dim=4 * model.embed_dim,
                    encoder_attention_heads=model.attention_heads,
                    token_dropout=model.token_dropout, max_positions=MAX_RESIDUES + 2)
    torch.save({"cfg": {"model": cfg}, "model": weights}, path)
    if regression:
        torch.save({"model": {k: state[k] for k in _REGRESSION_KEYS}},
                   path.with_name(path.stem + "-contact-regression.pt"))
    return path


# --- sequences and windows ---------------------------------------------------------------------------
def check_sequence(accession: str, sequence: str) -> str:
    """The sequence uppercased, or an InputError naming the protein and the first bad character."""
    sequence = sequence.upper()
    if not sequence:
        raise InputError(f"protein {accession} has an empty sequence.")
    bad = _INVALID.search(sequence)
    if bad:
        raise InputError(
            f"protein {accession} has {bad.group()!r} at residue {bad.start() + 1}, which is not an amino "
            f"acid ESM-2 reads (allowed: {RESIDUES})."
        )
    return sequence


def window_plan(length: int, window: int = MAX_RESIDUES,
                overlap: int = WINDOW_OVERLAP) -> list[tuple[int, int, int, int]]:
    """Windows covering a protein: (start, end, keep_from, keep_to), 0-based, end-exclusive.

    Residues keep_from..keep_to-1 of the result come from window start..end; the keep ranges tile
    0..length exactly. One window when the protein fits.
    """
    if not 0 <= overlap < window:
        raise ValueError("overlap must be in [0, window)")
    if length <= window:
        return [(0, length, 0, length)]
    stride = window - overlap
    starts = list(range(0, length - window, stride)) + [length - window]
    cuts = [(starts[i + 1] + starts[i] + window) // 2 for i in range(len(starts) - 1)]
    bounds = [0, *cuts, length]
    return [(s, s + window, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def _encoder(alphabet: Any) -> np.ndarray:
    lut = np.full(128, -1, dtype=np.int64)
    for char in RESIDUES:
        lut[ord(char)] = alphabet.get_idx(char)
    return lut


def _tokens(alphabet: Any, lut: np.ndarray, sequences: list[str]) -> torch.Tensor:
    """What fair-esm's BatchConverter builds (BOS + residues + EOS, padded), without its slow tokenizer."""
    width = max(len(s) for s in sequences) + 2
    tokens = np.full((len(sequences), width), alphabet.padding_idx, dtype=np.int64)
    for row, sequence in enumerate(sequences):
        tokens[row, 0] = alphabet.cls_idx
        tokens[row, 1:len(sequence) + 1] = lut[np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)]
        tokens[row, len(sequence) + 1] = alphabet.eos_idx
    return torch.from_numpy(tokens)


def forward_layer(model: Any, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """fair-esm's `model(tokens, repr_layers=[layer])["representations"][layer]`, stopping at `layer`.

    Mirrors ESM2.forward (token-dropout rescaling, padding zeroed, final layer norm on the last layer)
    but skips the blocks above `layer` and the LM head.
    """
    padding_mask = tokens.eq(model.padding_idx)
    x = model.embed_scale * model.embed_tokens(tokens)
    if model.token_dropout:
        x.masked_fill_((tokens == model.mask_idx).unsqueeze(-1), 0.0)
        mask_ratio_train = 0.15 * 0.8
        src_lengths = (~padding_mask).sum(-1)
        mask_ratio_observed = (tokens == model.mask_idx).sum(-1).to(x.dtype) / src_lengths
        x = x * (1 - mask_ratio_train) / (1 - mask_ratio_observed)[:, None, None]
    x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
    if layer == 0:
        return x
    x = x.transpose(0, 1)
    attn_mask = padding_mask if padding_mask.any() else None
    for block in model.layers[:layer]:
        x, _ = block(x, self_attn_padding_mask=attn_mask, need_head_weights=False)
    if layer == model.num_layers:
        x = model.emb_layer_norm_after(x)
    return x.transpose(0, 1)


def _batches(lengths: list[int], max_tokens: int) -> Iterator[list[int]]:
    """Indices (already in ascending length order) grouped so padded tokens stay within max_tokens.

    A sequence longer than the budget on its own goes alone in its batch.
    """
    batch: list[int] = []
    for index, length in enumerate(lengths):
        if batch and (length + 2) * (len(batch) + 1) > max_tokens:
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def embed_sequences(plm: LoadedPLM, items: Iterable[tuple[str, str]], layer: int, max_tokens: int = 4096,
                    *, window: int = MAX_RESIDUES,
                    overlap: int = WINDOW_OVERLAP) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (accession, float32 [length, embed_dim]) for each protein, in ascending length order.

    `items` is read in full when iteration starts (sequences only; embeddings are yielded as they are
    done). Sequences are checked first (InputError naming the first bad protein, before any compute), cut into
    windows when longer than `window`, sorted by length and batched so that each batch's padded token
    count stays within `max_tokens`. A protein is yielded as soon as all its windows are done.
    """
    if not 0 <= layer <= plm.num_layers:
        raise InputError(f"layer {layer} is out of range: {plm.name} has layers 0..{plm.num_layers}.")
    if max_tokens < 1:
        raise InputError("max_tokens must be positive.")
    proteins = [(accession, check_sequence(accession, sequence)) for accession, sequence in items]
    # segments: (length, protein index, window number, start, end)
    segments = []
    plans = []
    for p, (_, sequence) in enumerate(proteins):
        plan = window_plan(len(sequence), window, overlap)
        plans.append(plan)
        segments.extend((end - start, p, w, start, end) for w, (start, end, _, _) in enumerate(plan))
    segments.sort()
    lut = _encoder(plm.alphabet)
    pending: dict[int, dict[int, np.ndarray]] = {}
    lengths = [segment[0] for segment in segments]
    with torch.inference_mode():
        for batch in _batches(lengths, max_tokens):
            chosen = [segments[i] for i in batch]
            tokens = _tokens(plm.alphabet, lut, [proteins[p][1][s:e] for _, p, _, s, e in chosen])
            hidden = forward_layer(plm.model, tokens.to(plm.device), layer)
            hidden = hidden.float().cpu().numpy()
            for row, (length, p, w, _, _) in enumerate(chosen):
                parts = pending.setdefault(p, {})
                parts[w] = hidden[row, 1:length + 1]
                if len(parts) == len(plans[p]):
                    del pending[p]
                    yield proteins[p][0], _stitch(plans[p], parts)


def _stitch(plan: list[tuple[int, int, int, int]], parts: dict[int, np.ndarray]) -> np.ndarray:
    if len(plan) == 1:
        return np.ascontiguousarray(parts[0], dtype=np.float32)
    pieces = [parts[w][keep_from - start:keep_to - start] for w, (start, _, keep_from, keep_to)
              in enumerate(plan)]
    return np.concatenate(pieces, axis=0).astype(np.float32, copy=False)
