"""SAE architectures, one file each; the base class and the registry live in sae/model.py."""
