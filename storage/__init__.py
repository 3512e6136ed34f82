"""Bottom layer: everything plmlabel persists (Swiss-Prot, the SQLite database, the workspace, exports).

Imports nothing of ours.
"""
