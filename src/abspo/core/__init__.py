"""The foundation: plain helpers that know nothing of models or games.

Errors with a fix in their message, atomic file writes, hashes, JSON lines, timers, the run folder's layout,
config files and the training settings dataclasses, and a function run as a command. Every other layer may
import from here; nothing here imports from them.
"""
