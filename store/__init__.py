"""Artifacts on any fsspec URL: manifests, tokens artifacts, label stores, checkpoints."""
