"""Contracts between stages: configs, manifests, store layout and Arrow schemas."""
