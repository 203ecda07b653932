"""The models and their weights: the frozen base, the per-role LoRA adapters, and how they are laid out.

The base model's loading (:mod:`~abspo.weights.models`), the :class:`~abspo.weights.bank.AdapterBank` (one
adapter per role over one frozen base, plus frozen adapters such as a warm start or league snapshots), the
full-weight policy of the ``shared_full`` mode, the mode switch, adapter folders on disk, FSDP2 sharding of the
bank, process groups, and parameter accounting.
"""
