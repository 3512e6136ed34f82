"""The Starlette app of `plmlabel serve`: routes, limits, and errors as pages.

Why Starlette (on uvicorn): a small, well-kept ASGI toolkit (the core under FastAPI) with no template
engine or ORM to carry; serve needs routing, a threadpool for blocking work and a test client, which it
has, and uvicorn is the ASGI server its authors maintain beside it. Pages are server-rendered, so the
URL holds the whole state (a search survives Back and Forward without any script).

Blocking work (SQLite, ESM-2, the SAE) runs in worker threads (`run_in_threadpool`); the event loop only
parses requests and sends pages. A bad request ends as a page with one clear message; an unexpected
error ends as a 500 page and is logged; either way the server keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from agent.serve import pages
from agent.serve.data import feature_view, fired_features, protein_suggestions, require_feature
from agent.serve.limits import Limits, Paste, PasteError, check_paste, looks_like_accession, parse_form
from agent.serve.model_pool import ModelPool, workspace_loader
from agent.serve.readonly_db import check_schema, read_only_database
from agent.serve.render import SERVE_CSP
from storage.errors import InputError, NotFoundError, PlmlabelError
from storage.features_store import get_feature_stats
from storage.proteins import get_protein
from storage.saes import get_sae, list_saes
from storage.search import LabelQuery, search_labels
from storage.workspace import Workspace

log = logging.getLogger("plmlabel.serve")
HEADERS = {"Content-Security-Policy": SERVE_CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
FORM_TYPE = "application/x-www-form-urlencoded"


class TooLarge(PasteError):
    """A request body or query over the limit."""


class ServeState:
    """What every request reads: the workspace, the limits and the shared models."""

    def __init__(self, workspace: Workspace, limits: Limits, pool: ModelPool) -> None:
        self.workspace = workspace
        self.limits = limits
        self.pool = pool

    def db(self):
        return read_only_database(self.workspace.db_path)


def html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=HEADERS)


def _status(exc: PlmlabelError) -> int:
    if isinstance(exc, TooLarge):
        return 413
    return 404 if isinstance(exc, NotFoundError) else 400


Handler = Callable[[Request], Awaitable[Response]]


def guarded(handler: Handler) -> Handler:
    """Turn a PlmlabelError into a message page and anything else into a logged 500 page."""

    async def run(request: Request) -> Response:
        sae_id = request.path_params.get("sae_id")
        try:
            return await handler(request)
        except PlmlabelError as exc:
            return html(pages.message_page(str(exc), sae_id=sae_id), _status(exc))
        except Exception:
            log.exception("serve: %s %s failed", request.method, request.url.path)
            return html(pages.message_page("Something went wrong on the server while building this page; "
                                           "it is logged, and other pages still work.", sae_id=sae_id,
                                           title="Server error"), 500)

    return run


def _feature_number(text: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise NotFoundError(f"{text[:40]!r} is not a feature number; feature ids are whole numbers from 0.")
    return int(text)


def _flag(value: str | None) -> bool:
    return value in ("1", "on", "true", "yes")


# --- handlers ---------------------------------------------------------------------------------------
def make_handlers(state: ServeState) -> list[Route]:
    limits = state.limits

    @guarded
    async def home(request: Request) -> Response:
        def work() -> list[Any]:
            with state.db() as db:
                return list_saes(db)

        saes = await run_in_threadpool(work)
        if len(saes) == 1:
            return RedirectResponse(pages.sae_url(saes[0].sae_id), status_code=303)
        return html(pages.sae_list_page(saes))

    @guarded
    async def search(request: Request) -> Response:
        sae_id = request.path_params["sae_id"]
        query = request.query_params.get("q", "")
        if len(query) > limits.max_query_chars:
            raise InputError(f"the search is {len(query):,} characters long; at most "
                             f"{limits.max_query_chars} are read.")
        validated = _flag(request.query_params.get("validated"))

        def work() -> str:
            with state.db() as db:
                record = get_sae(db, sae_id)
                hits = search_labels(db, LabelQuery(text=query, sae_id=sae_id, validated=validated,
                                                    limit=limits.max_results))
                n_labels = db.query("select count(*) as n from labels where sae_id = ? and status = 'ok'",
                                    (sae_id,))[0]["n"]
            from agent.serve.data import export_sae

            return pages.search_page(export_sae(record), hits, query=query, validated=validated,
                                     limits=limits, n_labels=n_labels)

        return html(await run_in_threadpool(work))

    @guarded
    async def feature(request: Request) -> Response:
        sae_id = request.path_params["sae_id"]
        number = _feature_number(request.path_params["feature"])

        def work() -> str:
            with state.db() as db:
                return pages.feature_html(feature_view(state.workspace, db, sae_id, number))

        return html(await run_in_threadpool(work))

    @guarded
    async def protein(request: Request) -> Response:
        sae_id = request.path_params["sae_id"]
        accession = request.path_params["accession"]

        def work() -> str:
            with state.db() as db:
                suggestions = protein_suggestions(db, sae_id, accession)
                found = get_protein(db, accession)
            return pages.protein_page(sae_id, accession, found, suggestions)

        return html(await run_in_threadpool(work))

    @guarded
    async def analyze(request: Request) -> Response:
        sae_id = request.path_params["sae_id"]
        if request.method == "POST":
            form = parse_form(await read_form_body(request, limits.max_body_bytes))
        else:
            if len(request.url.query) > limits.max_body_bytes:
                raise TooLarge(f"the request is over {limits.max_body_bytes:,} bytes; paste a shorter "
                               "sequence.")
            form = dict(request.query_params)
        text = form.get("text", "")
        if request.method == "GET" and not text:
            await run_in_threadpool(_require_sae, state, sae_id)
            return html(pages.analyze_page(sae_id, limits))
        try:
            return html(await run_in_threadpool(_analyze, state, sae_id, text, form.get("feature")))
        except PasteError as exc:
            echo = text if len(text) <= limits.max_residues * 2 and "\x00" not in text else ""
            return html(pages.analyze_page(sae_id, limits, text=echo, message=str(exc)), _status(exc))

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return [
        Route("/", home),
        Route("/healthz", health),
        Route("/sae/{sae_id}/", search),
        Route("/sae/{sae_id}/features/{feature}", feature),
        Route("/sae/{sae_id}/analyze", analyze, methods=["GET", "POST"]),
        Route("/sae/{sae_id}/proteins/{accession}", protein),
    ]


async def read_form_body(request: Request, limit: int) -> bytes:
    """The body of a form post, refused past `limit` bytes (before reading it when the length is given)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        raise PasteError(f"send the sequence as a form ({FORM_TYPE}), not {content_type or 'no type'}; "
                         "files cannot be uploaded here: paste the text.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the paste is {int(declared):,} bytes; this server reads at most {limit:,} "
                       "(plmlabel serve --max-body).")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the paste is over {limit:,} bytes; this server reads at most {limit:,} "
                           "(plmlabel serve --max-body).")
        chunks.append(chunk)
    return b"".join(chunks)


def _require_sae(state: ServeState, sae_id: str) -> None:
    with state.db() as db:
        get_sae(db, sae_id)


def _paste(db: Any, text: str, limits: Limits) -> Paste:
    if looks_like_accession(text):
        accession = text.strip().upper()
        found = get_protein(db, accession)
        if found is None:
            raise PasteError(f"{accession} looks like a UniProt accession but is not a protein of this "
                             "workspace; paste its sequence instead.")
        paste = check_paste(found.sequence, limits)
        return paste.model_copy(update={"name": accession, "accession": accession})
    return check_paste(text, limits)


def _analyze(state: ServeState, sae_id: str, text: str, feature_text: str | None) -> str:
    """Check the paste, run the models (in this worker thread), and build the result page."""
    limits = state.limits
    with state.db() as db:
        record = get_sae(db, sae_id)
        paste = _paste(db, text, limits)
        chosen = None
        if feature_text:
            if not feature_text.isdigit():
                raise PasteError(f"feature {feature_text[:20]!r} is not a number.")
            chosen = int(feature_text)
            try:
                require_feature(record, chosen)
            except NotFoundError as exc:
                raise PasteError(str(exc)) from exc
    activations = state.pool.activations(sae_id, paste.sequence)
    with state.db() as db:
        fired = fired_features(db, sae_id, activations, limits.max_fired)
        n_fired = int((activations.max(axis=0) > 0).sum()) if activations.size else 0
        if chosen is None and fired:
            chosen = fired[0].feature
        stats = get_feature_stats(db, sae_id, chosen) if chosen is not None else None
    values = activations[:, chosen].tolist() if chosen is not None else None
    chosen_max = stats.max_activation if stats is not None and stats.max_activation > 0 else None
    return pages.result_page(sae_id, limits, text=text, name=paste.name, sequence=paste.sequence, fired=fired,
                             n_fired=n_fired, chosen=chosen, chosen_values=values, chosen_max=chosen_max,
                             accession=paste.accession)


async def not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    message = ("There is no page at this address." if status == 404
               else f"This address does not take a {request.method} request.")
    return html(pages.message_page(message, title="Not found" if status == 404 else "Not allowed"), status)


def create_app(workspace: Workspace, *, limits: Limits | None = None, pool: ModelPool | None = None,
               allowed_hosts: list[str] | None = None) -> Starlette:
    """The app over `workspace` (read-only). `pool` defaults to the workspace's own models."""
    workspace.require()
    check_schema(workspace.db_path)
    state = ServeState(workspace, limits or Limits(), pool or ModelPool(workspace_loader(workspace)))
    hosts = allowed_hosts or ["127.0.0.1", "localhost", "[::1]", "testserver"]
    app = Starlette(routes=make_handlers(state), exception_handlers={404: not_found, 405: not_found},
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])
    app.state.serve = state
    return app
