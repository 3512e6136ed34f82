"""`plmlabel serve`: a local web app over one workspace (Starlette on uvicorn).

    app.py          routes and the app factory (`create_app`)
    pages.py        the pages serve adds (search, paste a sequence, protein, messages)
    render.py       the one adapter over the static viewer's rendering (storage/export_html.py)
    data.py         what a page shows, read from the database and the activation index
    model_pool.py   ESM-2 + SAE loaded once per SAE behind a lock, run off the event loop
    readonly_db.py  the database opened read-only (a labeling job may write meanwhile)
    limits.py       request size, sequence length and residue checks

Everything is server-rendered and escaped; pages carry no script at all (the Content-Security-Policy
allows none), so text from an LLM or from Swiss-Prot can never run.
"""
