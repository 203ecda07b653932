"""What a checkpoint holds beyond Lightning's loop state, and the checks that make a resume exact or refused.

A checkpoint holds the adapters, never the frozen base (re-loaded from ``model.base`` on resume), plus:

- a **signature** (:func:`checkpoint_signature`): the base, the mode, the adapters' shapes and routing, the
  optimizers' settings, the anchor and the sha256 of each starting adapter. A resume whose run differs in any
  of them is refused in one line (:func:`check_checkpoint`, :func:`check_optimizers`) rather than loading
  states that belong to another run, which would fail mid-run or, worse, silently train something else;
- the **accumulation state** (:func:`accumulation_state`): how many batches each adapter has been updated on,
  and the gradients summed since its last step, so that a resume mid-accumulation steps on the same sum.

The readers of checkpoint files are in :mod:`abspo.training.checkpoint_io`.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from abspo.core.errors import ConfigError

CHECKPOINT_FORMAT = 1


def checkpoint_signature(module) -> dict:
    """What a resume must agree with (see the module docstring)."""
    bank = module.bank_spec.signature() if module.mode != "shared_full" else {}
    optimizers = {a: cfg.state_settings() for a, cfg in module.optim_cfg.items()}
    signature = {"format": CHECKPOINT_FORMAT, "base": module.base_cfg.name_or_path, "mode": module.mode, "bank": bank,
                 "optimizers": optimizers}
    # Only where they differ from a run without them, so that earlier checkpoints still resume.
    if module.anchor != "base":
        signature["anchor"] = module.anchor
    if module.bank.initial_sources:  # the starting adapters' weights: a resume must start from the same ones
        signature["initial"] = {a: src["sha256"] for a, src in module.bank.initial_sources.items()}
    return signature


def adapter_names(module) -> set[str]:
    """The module's state-dict keys of trainable adapter weights: all a checkpoint keeps of it."""
    return {k for k, _ in module.named_parameters() if module.bank.owner_of(k) is not None}


def check_checkpoint(module, checkpoint: dict, key: str = "--ckpt_path") -> None:
    """Raise a ConfigError unless ``checkpoint`` was written by a run with this base and these adapters."""
    saved = checkpoint.get("abspo")
    if saved is None:
        raise ConfigError(key, "the checkpoint was not written by abspo (it has no 'abspo' section)",
                          "resume from a checkpoint of an abspo run")
    mine = checkpoint_signature(module)
    if saved["base"] != mine["base"]:
        raise ConfigError(key, f"the checkpoint was trained on base model {saved['base']!r}, this run uses "
                          f"{mine['base']!r}", "set model.base.name_or_path to the checkpoint's base, or start a new run")
    roles = saved["bank"].get("roles", {})
    saved_mode = saved.get("mode") or ("shared_lora" if len(set(roles.values())) == 1 else "bipolicy")
    if saved_mode != module.mode:
        raise ConfigError(key, f"the checkpoint was trained with model.mode {saved_mode}, this run uses {module.mode}",
                          f"set model.mode: {saved_mode} to resume it, or start a new run (another run.name)")
    diffs = diff(saved["bank"], mine["bank"], "model.bank")
    if diffs:
        raise ConfigError(key, "the checkpoint's adapters differ from this run's: " + "; ".join(diffs),
                          "use the adapter settings of the checkpoint's run, or start a new run (another run.name)")
    if saved.get("anchor", "base") != mine.get("anchor", "base"):
        raise ConfigError(key, f"the checkpoint was trained with model.anchor {saved.get('anchor', 'base')}, this "
                          f"run uses {mine.get('anchor', 'base')}", "resume with the checkpoint's model.anchor, or "
                          "start a new run (another run.name)")
    if saved.get("initial", {}) != mine.get("initial", {}):
        raise ConfigError(key, "the adapters this run starts from (model.bank.adapters.<name>.init_from) are not "
                          f"the ones the checkpoint started from (sha256 {saved.get('initial', {})} vs "
                          f"{mine.get('initial', {})})", "point init_from at the adapters the run started "
                          "from (their files changed?), or start a new run (another run.name)")
    if "state_dict" not in checkpoint:
        return  # a sharded checkpoint's loop state: the strategy loads (and checks) its tensors itself
    missing = adapter_names(module) - set(checkpoint["state_dict"])
    if missing:
        raise ConfigError(key, f"the checkpoint lacks {len(missing)} adapter tensors (e.g. {sorted(missing)[0]})",
                          "resume from a complete abspo checkpoint")


def check_optimizers(module, checkpoint: dict) -> None:
    """Raise a ConfigError unless this run's optimizers are the checkpoint's. The optimizer and scheduler
    states a resume loads hold their own class, learning rate, betas and weight decay: a changed setting would
    be silently ignored (or, for another optimizer class, fail mid-run on the state's missing entries).
    Checkpoints from before this check carry no optimizer settings and are taken as they are."""
    saved = checkpoint.get("abspo", {}).get("optimizers")
    if saved is None:
        return
    diffs = diff(saved, checkpoint_signature(module)["optimizers"], "model.optimizers")
    if diffs:
        raise ConfigError("--ckpt_path", "the checkpoint's optimizer states were made with other settings, which "
                          "a resume would keep: " + "; ".join(diffs), "resume with the checkpoint's optimizer "
                          "settings, or start a new run (another run.name)")


def diff(saved, mine, path: str) -> list[str]:
    """Human-readable differences between two nested dicts: 'key: checkpoint X, this run Y'."""
    if isinstance(saved, dict) and isinstance(mine, dict):
        out = []
        for k in sorted(set(saved) | set(mine), key=str):
            if k not in mine:
                out.append(f"{path}.{k}: in the checkpoint, not in this run")
            elif k not in saved:
                out.append(f"{path}.{k}: in this run, not in the checkpoint")
            else:
                out += diff(saved[k], mine[k], f"{path}.{k}")
        return out
    return [] if saved == mine else [f"{path}: checkpoint {saved!r}, this run {mine!r}"]


# -- accumulation state ---------------------------------------------------------------------------------
def accumulation_state(module) -> dict:
    """How many batches each adapter has been updated on, and the gradients summed since its last step
    (LoRA-sized).

    Data parallel: the pending gradients are each process's own partial sums, so the checkpoint holds their
    sum (rank 0 writes it) and on resume rank 0 alone restores it: exact on any number of processes.
    Sharded (FSDP2): they are already the reduce-scattered sums, one shard per process (DTensors), which
    FSDP2Strategy writes into its torch.distributed.checkpoint folder beside the adapter shards and loads
    back resharded, so every process restores its own shard."""
    updater = module.updater
    pending = [(n, p) for n, p in module.named_parameters() if module.bank.owner_of(n) is not None
               and updater.pending(module.bank.owner_of(n))]
    collective = module.collective
    if module.layout.sharded:
        grads = {n: p.grad for n, p in pending if p.grad is not None}
    elif collective.active:
        summed = collective.sum_present([p.grad for _, p in pending], [p for _, p in pending])
        grads = {n: g.to("cpu") for (n, _), g in zip(pending, summed) if g is not None}
    else:
        grads = {n: p.grad.detach().to("cpu", copy=True) for n, p in pending if p.grad is not None}
    return {"updates": dict(updater.updates), "grads": grads}


def restore_accumulation(module, saved: dict) -> dict[str, torch.Tensor]:
    """Take back a checkpoint's :func:`accumulation_state`; returns the gradients this process must set again
    (:func:`set_gradients`) once the Trainer has zeroed them."""
    module.updater.updates = defaultdict(int, saved["updates"])
    every_process = saved.get("sharded", False)  # each process holds its own shard of the sums
    return saved["grads"] if every_process or module.collective.rank == 0 else {}


def set_gradients(module, grads: dict[str, torch.Tensor]) -> None:
    """``grads`` (parameter name -> gradient) as the module's parameters' ``.grad``."""
    params = dict(module.named_parameters())
    for name, grad in grads.items():
        params[name].grad = grad.to(params[name].device, params[name].dtype)
