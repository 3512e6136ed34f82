"""Numerics: ESM-2 embeddings, SAE architectures and training, the activation index, concept F1.

Imports storage only.
"""
