"""Callbacks that plug into the self-play loop (see docs/callbacks.md)."""

from abspo.callbacks.export import AdapterExport

__all__ = ["AdapterExport"]
