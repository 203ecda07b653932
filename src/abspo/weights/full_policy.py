"""FullPolicy: one fully trainable policy plays every role, anchored to a frozen copy of the base.

The ``shared_full`` baseline of the comparison (``model.mode: shared_full``), as in Self-RedTeam: every weight
of one model trains on both roles' games, and the KL anchor is a frozen reference copy of the starting
weights. It has the interface the training step uses from :class:`~abspo.weights.bank.AdapterBank` (``role``,
``anchor``, ``adapter_parameters``, ``owner_of``, ``export``, ``load``), with a single "adapter" named
``shared`` that is the whole policy, so the step, the loss and the game are the very same code in every mode.

Why a copy, not the adapter trick: with LoRA, switching the adapters off gives the base back for free; a full
fine-tune overwrites the base, so the anchor has to be kept separately (twice the weights in memory, which is
the cost this baseline exists to show). The trainable copy is float32 whatever ``model.base.dtype`` is (as
LoRA weights are): Adam updates of a bf16 weight round away. The reference is float32 too (an exact upcast of a
bf16 base): a bf16 reference would compute the same weights with other rounding, so the policy would start
~1.5e-3 nats per token away from its anchor (measured on SmolLM2) and sample other turns, where the LoRA modes
start exactly at theirs. The cost is the reference at 4 bytes per parameter (``abspo plan`` counts it).

Started from an adapter (``init_from``: the defender's, as the shared modes start), the adapter is merged into
the trained policy's weights; ``anchor="initial"`` merges it into the reference too, ``anchor="base"`` keeps the
reference at the base.

Exports are ordinary Hugging Face model folders (``config.json`` + ``model.safetensors`` + the tokenizer),
loadable with ``AutoModelForCausalLM.from_pretrained(folder)``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from abspo.core.atomic import atomic_folder
from abspo.weights.adapter_folders import check_adapter_fits, read_initial_adapter
from abspo.weights.bank import ROLES, checkpoint_decoder_layers, gradient_pass_mode, write_role_file
from abspo.core.errors import ConfigError
from abspo.weights.modes import SHARED


class _Spec:
    """The role -> "adapter" mapping of a full policy: every role on ``shared``."""

    roles = {role: SHARED for role in ROLES}
    adapters = {SHARED: None}


class FullPolicy(nn.Module):
    """A trainable copy of the base for every role, and the frozen base as the anchor."""

    mode = "shared_full"
    spec = _Spec()

    def __init__(self, base: nn.Module, tokenizer=None, init_from: str | None = None, anchor: str = "base"):
        super().__init__()
        if any(p.is_meta for p in base.parameters()):
            raise ConfigError("model.mode", "shared_full needs the base's weights (it copies them into the trained "
                              "policy), and this base is on the meta device",
                              "use model.mode: bipolicy or shared_lora for meta-device accounting, or set "
                              "model.base.init_on_meta: false")
        self.reference = base.float().requires_grad_(False).eval()  # in place; exact from bf16
        self.model = copy.deepcopy(self.reference).requires_grad_(True).eval()
        self.tokenizer = tokenizer
        self.initial_sources: dict[str, dict[str, str]] = {}
        if init_from is not None:
            key = "model.bank.adapters.defender.init_from"
            start = read_initial_adapter(init_from, key)
            merged = merged_weights(self.reference, start.folder, start.state, key)
            self.model.load_state_dict(merged)
            if anchor == "initial":
                self.reference.load_state_dict(merged)
            self.initial_sources[SHARED] = start.source

    # -- parameters -------------------------------------------------------------------------------
    def owner_of(self, param_name: str) -> str | None:
        """``shared`` for a weight of the trained policy (named as here or as in a module holding this one)."""
        name = param_name.removeprefix("bank.")
        return SHARED if name.startswith("model.") else None

    def adapter_parameters(self, adapter: str) -> list[nn.Parameter]:
        if adapter != SHARED:
            raise KeyError(adapter)
        return list(self.model.parameters())

    def role_parameters(self, role: str) -> list[nn.Parameter]:
        return self.adapter_parameters(self.adapter_for(role))

    def adapter_for(self, role: str) -> str:
        return self.spec.roles[role]

    def base_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The frozen anchor's weights."""
        return self.reference.named_parameters()

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained policy's weights, keyed as in ``self.model`` (as the bank keys its adapters)."""
        return {n: p.detach() for n, p in self.model.named_parameters()}

    # -- routing ----------------------------------------------------------------------------------
    @contextmanager
    def role(self, role: str) -> Iterator[nn.Module]:
        if role not in self.spec.roles:
            raise KeyError(f"unknown role {role!r}; roles are {sorted(self.spec.roles)}")
        yield self.model

    @contextmanager
    def anchor(self, role: str | None = None) -> Iterator[nn.Module]:
        """The frozen reference, for every role."""
        yield self.reference

    def enable_activation_checkpointing(self) -> None:
        self._checkpointed = checkpoint_decoder_layers(self.model)

    @contextmanager
    def update_mode(self) -> Iterator[None]:
        """Gradient passes in eval mode (no dropout, as for the anchor)."""
        with gradient_pass_mode(self.model, getattr(self, "_checkpointed", [])):
            yield

    # -- export -----------------------------------------------------------------------------------
    def export(self, role: str, folder: str | Path, write: bool = True) -> Path:
        """Write the policy (the same weights for every role) as a Hugging Face model folder, atomically."""
        folder = Path(folder)
        if not write:
            return folder
        with atomic_folder(folder) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            write_role_file(tmp, role, SHARED, self.mode)
        return folder

    def load(self, role: str, folder: str | Path, key: str = "model") -> None:
        """Load a model folder (as :meth:`export` writes it) into the policy, in place; shapes must match."""
        from transformers import AutoModelForCausalLM

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ConfigError(key, f"{folder} has no config.json, so it is not a model folder",
                              "point at a folder exported by a shared_full run (checkpoints/<run>/adapters/<role>)")
        try:
            loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        except Exception as err:  # noqa: BLE001 - any unreadable folder is a user-facing problem here
            raise ConfigError(key, f"cannot load the model in {folder} ({type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0][:200]})", "re-export it, or point at another folder") from None
        ours = self.model.state_dict()
        theirs = loaded.state_dict()
        wrong = sorted(k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape)
        if wrong or set(theirs) - set(ours):
            example = (wrong or sorted(set(theirs) - set(ours)))[0]
            raise ConfigError(key, f"the model in {folder} does not match this run's base (e.g. {example})",
                              "evaluate it with the base it was trained from (model.base.name_or_path)")
        self.model.load_state_dict(theirs)


def merged_weights(model: nn.Module, folder: Path, state: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    """``model``'s state dict with the LoRA adapter in ``folder`` (its tensors: ``state``) merged into its weights:
    W + (alpha / r) B A, computed by PEFT on a copy (``model`` is left as it is)."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    config = LoraConfig.from_pretrained(str(folder))
    config.inference_mode = False
    peft_model = get_peft_model(copy.deepcopy(model), config)
    check_adapter_fits(peft_model, folder, "default", key, "this run's base",
                       "use an adapter trained on this base (model.base.name_or_path)")
    set_peft_model_state_dict(peft_model, state)
    return peft_model.merge_and_unload().state_dict()
