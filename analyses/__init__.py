"""Analyses built on interp: each a pure function from a model (and inputs) to a pandas DataFrame."""

__all__: list[str] = []
