"""The application layer: LLM backends, the explain -> simulate -> score protocol, jobs, the CLI.

Imports sae, storage and prompts; nothing imports it.
"""
