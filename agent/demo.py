"""`plmlabel demo`: the whole pipeline on the bundled Swiss-Prot sample, in one call.

import -> embed (ESM-2 8M when its weights are cached or downloadable, else a small randomly initialised
ESM-2, loudly flagged: labels are then only a smoke test) -> train a TopK SAE -> index -> concepts ->
label the features worth labeling (`--select informative`, agent/labeling/informative.py; an LLM when
a key is set, else the offline baseline) -> the best labels -> the HTML viewer.

Each stage reuses what an earlier run of the demo left in the workspace, so a rerun is quick and an
interrupted demo resumes. Progress goes through a small `DemoReporter` so the CLI can draw it.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, Field

from sae.plm_keys import plm_model_key
from storage.errors import NotFoundError
from storage.workspace import Config, Workspace

DEMO_SAE = "demo-topk"
DEMO_MODEL = "esm2_t6_8M_UR50D"
DEMO_LAYER = 4
SAMPLE_RESOURCE = "swissprot_demo.dat.gz"
# The fallback has the 8M model's shape (6 layers x 320) so everything downstream is sized as for real.
RANDOM_ESM = {"num_layers": 6, "embed_dim": 320, "attention_heads": 20, "seed": 0}
RANDOM_ESM_FILE = "esm2_random_t6_320.pt"


class DemoSettings(BaseModel):
    d_sae: int = Field(1024, gt=0)
    k: int = Field(32, gt=0)
    epochs: float = Field(3.0, gt=0)  # training tokens = epochs x residues embedded
    batch_size: int = Field(1024, gt=0)
    n_label: int = Field(48, gt=0)  # features labeled: the first of the `--select informative` ranking
    backend: str | None = None  # None: anthropic / openai when their key is set, else baseline
    model: str | None = None
    plm: str | None = None  # force an ESM-2 name or checkpoint path (tests use a tiny one)
    layer: int | None = None


class BestLabel(BaseModel):
    feature: int
    label: str
    pearson: float | None
    validated: bool
    concepts: list[str]
    picked_because: str = ""


class Picked(BaseModel):
    feature: int
    reason: str


class DemoSummary(BaseModel):
    workspace: str
    plm_model: str
    plm_random: bool
    layer: int
    n_proteins: int
    n_residues: int
    sae_id: str
    sae_metrics: dict[str, float | None]
    n_features_alive: int
    n_concepts_f1_above: int
    n_features_f1_above: int
    backend: str
    backend_reason: str | None
    label_model: str
    n_labeled: int
    n_validated: int
    cost_usd: float | None
    selection: str  # how the labeled features were chosen, in one line
    picked: list[Picked]  # each labeled feature and why, in rank order
    best: list[BestLabel]
    viewer: str
    seconds: dict[str, float]


class DemoReporter(Protocol):
    def stage(self, name: str, detail: str = "") -> None: ...
    def progress(self, done: int, total: int | None, text: str = "") -> None: ...
    def warn(self, message: str) -> None: ...


def sample_path() -> Path:
    """The bundled sample's path inside the installed package (works from a wheel too)."""
    return Path(str(resources.files("storage.sample_data").joinpath(SAMPLE_RESOURCE)))


def _choose_plm(ws: Workspace, settings: DemoSettings, report: DemoReporter) -> tuple[str, bool]:
    """ESM-2 8M if it can be had, else a random one of the same shape saved in the workspace."""
    from sae.plm import load_esm, make_random_esm2, save_esm2_checkpoint

    if settings.plm:
        return settings.plm, False
    try:
        load_esm(DEMO_MODEL, device="cpu")
        return DEMO_MODEL, False
    except NotFoundError as exc:
        report.warn(
            f"{exc} Falling back to a RANDOMLY INITIALISED ESM-2 (6 layers x 320): its features mean "
            "little, so the labels below are only a smoke test of the pipeline. Put the ESM-2 8M weights "
            "in the torch hub cache (or pass --plm PATH) for real labels."
        )
    path = ws.root / "models" / RANDOM_ESM_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        model, _alphabet = make_random_esm2(**RANDOM_ESM)
        save_esm2_checkpoint(model, path)
    return str(path), True


def _name_the_model_used(ws: Workspace, config: Config, plm: str, layer: int) -> Config:
    """Make plmlabel.toml name the ESM-2 and layer the demo embeds with (the random checkpoint when it
    fell back), so every command of the README's tour run in the demo workspace reads the same model."""
    if config.plm.model == plm and config.plm.layer == layer:
        return config
    config = config.model_copy(update={"plm": config.plm.model_copy(update={"model": plm, "layer": layer})})
    ws.save_config(config)
    return config


def run_demo(ws: Workspace, report: DemoReporter, settings: DemoSettings | None = None) -> DemoSummary:
    """Run every stage; raise a PlmlabelError (one sentence) when one cannot go on."""
    from agent.export_bundle import gather_bundle
    from agent.labeling.selection import FeatureSelection, plan_features
    from agent.labeling.setup import LabelOptions, label
    from sae.concepts import evaluate_sae_concepts, store_concepts
    from sae.embed import embed_proteins
    from sae.index import build_index
    from sae.train import train_in_workspace
    from storage.export import write_export
    from storage.labels import list_labels
    from storage.proteins import import_files
    from storage.saes import get_sae

    settings = settings or DemoSettings()
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 2)
        clock = now

    ws.init(Config())
    config = ws.load_config()

    report.stage("import", "the bundled Swiss-Prot sample (300 real entries)")
    skipped: list[str] = []
    with ws.db() as db:
        imported = import_files(db, [sample_path()], on_warning=skipped.append)
    if skipped:
        report.warn(f"{len(skipped)} Swiss-Prot annotations of the sample lie on other isoforms and were "
                    "skipped (only canonical sequences are embedded).")
    lap("import")

    plm, random_plm = _choose_plm(ws, settings, report)
    layer = settings.layer if settings.layer is not None else DEMO_LAYER
    config = _name_the_model_used(ws, config, plm, layer)
    report.stage("embed", f"{Path(plm).name if random_plm else plm}, layer {layer}")
    embedded = embed_proteins(ws, plm, layer, None, config.plm.max_tokens, "auto", "auto",
                              progress=lambda done, total: report.progress(done, total, "residues"))
    lap("embed")

    report.stage("train", f"TopK SAE, {settings.d_sae} features, k={settings.k}")
    tokens = int(settings.epochs * embedded.n_residues)
    with ws.db() as db:
        try:
            record = get_sae(db, DEMO_SAE)
            reuse = record.plm_model == plm_model_key(plm, ws.root) and record.layer == layer
        except NotFoundError:
            reuse = False
    if not reuse:
        record, _result = train_in_workspace(
            ws, DEMO_SAE, model=plm, layer=layer, architecture="topk", d_sae=settings.d_sae,
            k=settings.k, tokens=tokens, batch_size=settings.batch_size, lr=1e-3, seed=0, force=True,
            resume=False, checkpoint_every=0,
            progress=lambda step, total, metrics: report.progress(
                step, total, f"loss {metrics.get('loss', float('nan')):.3f}  L0 {metrics.get('l0', 0):.1f}"),
        )
    lap("train")

    report.stage("index", "per-protein maxima, example and held-out sets")
    index = build_index(ws, DEMO_SAE, progress=lambda what, done, total: report.progress(done, total, what))
    lap("index")

    report.stage("concepts", "Swiss-Prot concept F1 (InterPLM's protocol)")
    concepts = evaluate_sae_concepts(ws, DEMO_SAE, progress=lambda done, total: report.progress(done, total))
    with ws.db() as db:
        store_concepts(db, concepts)
    lap("concepts")

    selection = FeatureSelection(select="informative", limit=settings.n_label)
    with ws.db() as db:  # what `label` will pick (the ranking is deterministic), with the reasons
        plan = plan_features(db, DEMO_SAE, selection.model_copy(update={"relabel": True}),
                             n_indexed=index.n_proteins)
    report.stage("label", plan.note or f"--select informative --limit {settings.n_label}")
    options = LabelOptions(sae_id=DEMO_SAE, selection=selection, backend=settings.backend,
                           model=settings.model)
    job = label(ws, options, on_progress=lambda event: report.progress(event.done, event.total, "features"))
    lap("label")

    report.stage("viewer", "static HTML viewer")
    with ws.db() as db:
        bundle = gather_bundle(ws, db, DEMO_SAE, "html", warn=report.warn)
        picked = set(plan.features)
        stored = [s for s in list_labels(db, DEMO_SAE) if s.status == "ok" and s.feature in picked]
    viewer = write_export(bundle, "html", ws.root / "viewer")
    lap("viewer")

    stored.sort(key=lambda s: (s.pearson is not None, s.pearson or 0.0), reverse=True)
    best = [BestLabel(feature=s.feature, label=s.label or "", pearson=s.pearson, validated=bool(s.validated),
                      concepts=list(s.concepts or []), picked_because=plan.reasons.get(s.feature, ""))
            for s in stored[:10]]
    metrics = record.metrics or {}
    return DemoSummary(
        workspace=str(ws.root), plm_model=plm, plm_random=random_plm, layer=layer,
        n_proteins=imported.total, n_residues=embedded.n_residues, sae_id=DEMO_SAE,
        sae_metrics={k: metrics.get(k) for k in ("fve", "l0", "dead_fraction") if k in metrics},
        n_features_alive=index.n_features - index.n_dead_features,
        n_concepts_f1_above=concepts.n_concepts_f1_above, n_features_f1_above=concepts.n_features_f1_above,
        backend=job.backend, backend_reason=job.backend_reason, label_model=job.model, n_labeled=len(stored),
        n_validated=sum(1 for s in stored if s.validated), cost_usd=job.cost_usd, selection=plan.note or "",
        picked=[Picked(feature=f, reason=plan.reasons[f]) for f in plan.features], best=best,
        viewer=str(viewer.out_dir / "index.html"), seconds=seconds,
    )

