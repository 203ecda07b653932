"""Callbacks that plug into the self-play loop (see docs/callbacks.md)."""

from abspo.callbacks.collapse import CollapseDiagnostics
from abspo.callbacks.export import AdapterExport
from abspo.callbacks.retention import ReasoningRetention
from abspo.callbacks.safety_table import SafetyTable
from abspo.callbacks.samples import GameSamplesPage

__all__ = ["AdapterExport", "CollapseDiagnostics", "GameSamplesPage", "ReasoningRetention", "SafetyTable"]
