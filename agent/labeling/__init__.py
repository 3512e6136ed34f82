"""Labeling: from `plmlabel label` to the row it writes, in one straight line.

    setup.py       one job set-up for label / label --batch / label --nightly: backend and settings,
                   the workspace lock, the selection, the examples, the labeler; then a transport
    selection.py   which features (explicit selectors, the nightly selection)
    examples.py    where examples come from; an unreadable index fails the feature and stops the run
    protocol.py    the stages (explain, simulate, the per-residue pass): request builders + parsers
    sync.py        transport 1: llm.generate under one semaphore
    batch.py       transport 2: the providers' batch APIs (half price), across restarts
    writer.py      the one writer of a run: store, tally, budget, stop rules, progress, runs row
    estimate.py    cost estimates and dry runs
    summary.py     the one summary type, exit codes, the one-line summary

Import the public names from the modules themselves (this package imports nothing, so agent/backends.py
can use the protocol without a cycle).
"""
