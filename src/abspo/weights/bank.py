"""AdapterBank: one LoRA adapter per role on one frozen base.

Roles (``attacker``, ``defender``) map to named LoRA adapters. In ABS every role has its own adapter, so
the two policies never share trainable parameters; mapping several roles to one adapter gives the
parameter-shared self-play baseline with the same code.

Why not PEFT's ``set_adapter`` / ``disable_adapter``? Both flip ``requires_grad`` on adapter weights as a
side effect (PEFT issues 1377, 2436; TRL issue 3031): an optimizer built by filtering ``requires_grad``
then silently holds nothing, and a role switch in the middle of a step freezes the other role. The bank
pins ``requires_grad=True`` on every adapter weight once, selects a role's parameters *by name*, and
switches roles by setting the active adapter on each LoRA layer directly, which only changes routing.

``anchor(role)`` is the role's KL anchor. With ``anchor="base"`` (the paper's) it routes around every adapter:
the frozen base. That is the right anchor only while a role starts at zero (LoRA B = 0, how adapters are created
here): a role started from an existing adapter (``LoraSpec.init_from``) sits away from the base at step 0, and
an anchor to the base pulls it back toward the base (TRL issues 1340, 3194). ``anchor="initial"`` anchors such a
role to its own starting adapter instead, kept in the bank as a **frozen adapter**: a few megabytes beside the
trainable ones, never a copy of the base, and switched to like any other adapter (routing only). Frozen adapters
are a general slot (:meth:`AdapterBank.add_frozen`): any fixed adapter the game needs, a starting point or a past
opponent, lives there, non-trainable and outside the trainable state.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn

from abspo.weights.adapter_folders import check_adapter_matches, read_initial_adapter
from abspo.core.atomic import atomic_folder
from abspo.weights.distributed import full_tensor
from abspo.core.errors import ConfigError

ROLES = ("attacker", "defender")
Anchor = Literal["base", "initial"]
ANCHORS: tuple[str, ...] = ("base", "initial")
INITIAL_SUFFIX = "__initial"


def check_anchor(anchor: str) -> None:
    """``model.anchor`` is one of :data:`ANCHORS`."""
    if anchor not in ANCHORS:
        raise ConfigError("model.anchor", f"unknown anchor {anchor!r}", f"use one of {list(ANCHORS)}")

"""A frozen copy of adapter ``a``'s starting point is adapter ``a + INITIAL_SUFFIX``."""


@dataclass
class LoraSpec:
    """One LoRA adapter."""

    r: int = 16
    """Rank."""
    alpha: float = 16.0
    """Scaling numerator: the update is (alpha / r) * B @ A. alpha = r, as in the dual-LoRA reproduction."""
    dropout: float = 0.0
    """Dropout on the adapter input. 0 keeps log-probs deterministic between rollout and update."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or 'all-linear' (every linear layer but the output head, as in the paper)."""
    init_from: str | None = None
    """Start from this PEFT adapter (a folder with adapter_config.json + adapter_model.safetensors, or a hub id
    that is in your Hugging Face cache or reachable) instead of zero: a safety SFT (`abspo sft`), an earlier run's
    export. Safetensors only. Its rank, alpha and target modules must equal this spec's. See model.anchor."""

    def __post_init__(self) -> None:
        if self.init_from is not None:
            self.init_from = str(self.init_from)

    def peft_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        )


@dataclass
class BankSpec:
    """Adapters and which role uses which."""

    adapters: dict[str, LoraSpec] = field(default_factory=lambda: {"attacker": LoraSpec(), "defender": LoraSpec()})
    """Adapter name -> LoRA spec."""
    roles: dict[str, str] = field(default_factory=lambda: {"attacker": "attacker", "defender": "defender"})
    """Role -> adapter name. Map both roles to one adapter for the parameter-shared baseline."""

    def validate(self) -> None:
        for role, adapter in self.roles.items():
            if role not in ROLES:
                raise ConfigError(f"model.bank.roles.{role}", f"unknown role {role!r}", f"roles are {list(ROLES)}")
            if adapter not in self.adapters:
                raise ConfigError(f"model.bank.roles.{role}", f"adapter {adapter!r} is not declared",
                                  f"declare it under model.bank.adapters (declared: {sorted(self.adapters)})")
        for role in ROLES:
            if role not in self.roles:
                raise ConfigError("model.bank.roles", f"role {role!r} has no adapter",
                                  f"add `{role}: <adapter name>` (adapters: {sorted(self.adapters)})")
        unused = set(self.adapters) - set(self.roles.values())
        if unused:
            raise ConfigError("model.bank.adapters", f"adapter(s) {sorted(unused)} are used by no role",
                              "remove them or map a role to them under model.bank.roles")

    def signature(self) -> dict:
        """What a checkpoint must match to be resumable into this bank."""
        # Not init_from's path: the checkpoint records the starting weights' hash instead (a moved folder resumes)
        adapters = {k: {f: x for f, x in asdict(v).items() if f != "init_from"} for k, v in self.adapters.items()}
        return {"roles": dict(self.roles), "adapters": adapters}


class AdapterBank(nn.Module):
    """LoRA adapters for every role on one frozen base, with role switching that never touches grads."""

    def __init__(self, base: nn.Module, spec: BankSpec, anchor: str = "base"):
        super().__init__()
        spec.validate()
        check_anchor(anchor)
        self.spec = spec
        names = list(spec.adapters)
        self._check_targets(base, spec)
        # Read every starting adapter before building anything: a bad folder fails before the model is touched.
        starts = {name: read_initial_adapter(spec.adapters[name].init_from, f"model.bank.adapters.{name}.init_from")
                  for name in names if spec.adapters[name].init_from is not None}
        model = get_peft_model(base, spec.adapters[names[0]].peft_config(), adapter_name=names[0])
        for name in names[1:]:
            model.add_adapter(name, spec.adapters[name].peft_config())
        self.model: PeftModel = model
        self.frozen: dict[str, str] = {}
        """Frozen adapter name -> what it holds (its source): non-trainable, not in the trainable state."""
        self.anchors: dict[str, str] = {}
        """Trainable adapter -> the frozen adapter that is its KL anchor (absent: the base, adapters off)."""
        self._initial: dict[str, torch.Tensor] = {}  # parameter name -> starting value, for init_from adapters
        self.initial_sources: dict[str, dict[str, str]] = {}
        """Adapter -> its init_from and the sha256 of the weights read: a resume checks it starts from the same."""
        for name, start in starts.items():
            check_adapter_matches(model, start.folder, name, f"model.bank.adapters.{name}.init_from",
                                  f"model.bank.adapters.{name}",
                                  f"set model.bank.adapters.{name} (r, alpha, target_modules) to the adapter's "
                                  f"adapter_config.json, and the base to the one it was trained on")
            self._initial.update(_keyed_like_model(model, name, start.state))
            self.initial_sources[name] = start.source
            if anchor == "initial":
                self._add_frozen(name + INITIAL_SUFFIX, spec.adapters[name], start.state,
                                 f"initial {name} ({start.folder})")
                self.anchors[name] = name + INITIAL_SUFFIX
        if not any(p.is_meta for p in model.parameters()):
            with torch.no_grad():
                for pname, param in model.named_parameters():
                    if self._adapter_of(pname) is not None:
                        param.copy_(self.initial_value(pname, tuple(param.shape)))
        self._layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        # Pin grads once: every trainable adapter weight trains; the base and frozen adapters do not. Nothing below
        # flips them.
        for pname, param in model.named_parameters():
            param.requires_grad_(self.owner_of(pname) is not None)
        self._route(names[0], enabled=True)

    def _add_frozen(self, name: str, lora: LoraSpec, state: dict[str, torch.Tensor], source: str) -> None:
        self.model.add_adapter(name, lora.peft_config())
        self._initial.update(_keyed_like_model(self.model, name, state))
        self.frozen[name] = source

    def add_frozen(self, name: str, lora: LoraSpec, state: dict[str, torch.Tensor], source: str = "") -> None:
        """Add a frozen, non-trainable adapter ``name`` holding ``state`` (keyed as PEFT saves an adapter, as in
        ``adapter_model.safetensors``). Route to it with :meth:`use`; it is never in a role's parameters, the
        trainable state or an optimizer, and training never changes it."""
        if name in self.model.peft_config:
            raise ValueError(f"adapter {name!r} exists already")
        self._add_frozen(name, lora, state, source or name)
        self._layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        with torch.no_grad():
            for pname, param in self.model.named_parameters():
                if self._adapter_of(pname) == name:
                    param.copy_(self.initial_value(pname, tuple(param.shape)))
                    param.requires_grad_(False)
        self._route(*self._active)

    def frozen_start(self, adapter: str) -> str:
        """The frozen adapter holding ``adapter``'s starting point (its ``init_from``): the KL anchor's under
        ``anchor="initial"``, else a copy added now (for measuring where a role started)."""
        if adapter not in self.initial_sources:
            raise KeyError(f"adapter {adapter!r} did not start from an adapter (no init_from)")
        name = adapter + INITIAL_SUFFIX
        if name not in self.frozen:
            state = {_saved_key(n): v for n, v in self._initial.items() if self._adapter_of(n) == adapter}
            self.add_frozen(name, self.spec.adapters[adapter], state, f"initial {adapter}")
        return name

    def initial_value(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The starting value of adapter tensor ``name``: its ``init_from`` adapter's, else PEFT's default
        (:func:`lora_initial_value`). What a sharded bank built on the meta device fills its shards with."""
        if name in self._initial:
            return self._initial[name]
        return lora_initial_value(name, shape)

    # -- parameters -------------------------------------------------------------------------------
    @staticmethod
    def _adapter_of(param_name: str) -> str | None:
        parts = param_name.split(".")
        for i, part in enumerate(parts[:-1]):
            if part.startswith("lora_"):
                return parts[i + 1]
        return None

    def owner_of(self, param_name: str) -> str | None:
        """The trainable adapter a parameter (named as in this bank or in a module holding it) belongs to; None for
        the frozen base and for frozen adapters. What checkpoints keep: the trainable state and nothing else (a
        frozen starting adapter is read again from its ``init_from``, whose hash the checkpoint records)."""
        adapter = self._adapter_of(param_name)
        return None if adapter in self.frozen else adapter

    @property
    def mode(self) -> str:
        """``bipolicy`` (a role per adapter) or ``shared_lora`` (one adapter plays every role)."""
        return "shared_lora" if len(set(self.spec.roles.values())) == 1 else "bipolicy"

    def adapter_parameters(self, adapter: str) -> list[nn.Parameter]:
        """The trainable parameters of one adapter, selected by name (never by requires_grad)."""
        if adapter not in self.spec.adapters:
            raise KeyError(adapter)
        return self._parameters_of(adapter)

    def frozen_parameters(self, adapter: str) -> list[nn.Parameter]:
        """The weights of frozen adapter ``adapter`` (never trained)."""
        if adapter not in self.frozen:
            raise KeyError(adapter)
        return self._parameters_of(adapter)

    def _parameters_of(self, adapter: str) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if self._adapter_of(n) == adapter]

    def role_parameters(self, role: str) -> list[nn.Parameter]:
        return self.adapter_parameters(self.adapter_for(role))

    def adapter_for(self, role: str) -> str:
        return self.spec.roles[role]

    def base_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.model.named_parameters() if self._adapter_of(n) is None)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """All trainable adapter tensors, keyed as in the module's state dict: the whole trainable state."""
        return {n: p.detach() for n, p in self.model.named_parameters() if self.owner_of(n) is not None}

    # -- routing ----------------------------------------------------------------------------------
    def _route(self, adapter: str, enabled: bool) -> None:
        for layer in self._layers:
            layer._active_adapter = [adapter]
            layer._disable_adapters = not enabled
        self._active = (adapter, enabled)

    @contextmanager
    def role(self, role: str) -> Iterator[PeftModel]:
        """Run the model as ``role``; restores the previous routing on exit."""
        if role not in self.spec.roles:
            raise KeyError(f"unknown role {role!r}; roles are {sorted(self.spec.roles)}")
        previous = self._active
        self._route(self.adapter_for(role), enabled=True)
        try:
            yield self.model
        finally:
            self._route(*previous)

    @contextmanager
    def use(self, adapter: str | None) -> Iterator[PeftModel]:
        """Run the model through adapter ``adapter`` (trainable or frozen), or the base alone for None; restores
        the previous routing on exit. Routing only: about a millisecond, whatever the model's size."""
        if adapter is not None and adapter not in self.model.peft_config:
            raise KeyError(f"unknown adapter {adapter!r}; adapters are {sorted(self.model.peft_config)}")
        previous = self._active
        self._route(previous[0] if adapter is None else adapter, enabled=adapter is not None)
        try:
            yield self.model
        finally:
            self._route(*previous)

    @contextmanager
    def anchor(self, role: str | None = None) -> Iterator[PeftModel]:
        """Run ``role``'s KL anchor: its frozen starting adapter under ``anchor="initial"`` when it started from
        one, else the frozen base with every adapter switched off (also for ``role=None``)."""
        frozen = self.anchors.get(self.adapter_for(role)) if role is not None else None
        with self.use(frozen) as model:
            yield model

    def enable_activation_checkpointing(self) -> None:
        """Recompute each decoder layer in backward instead of keeping its activations. Acts in
        :meth:`update_mode` only."""
        self._checkpointed = checkpoint_decoder_layers(self.model.get_base_model())

    @contextmanager
    def update_mode(self) -> Iterator[None]:
        """Gradient passes: the base stays in eval mode (no base dropout: the anchor and the sampled policy are
        deterministic, so the PPO ratio compares like with like); only LoRA's own dropout, if set, acts."""
        dropouts = [m for name, m in self.model.named_modules() if name.rsplit(".", 2)[-2:-1] == ["lora_dropout"]]
        with gradient_pass_mode(self.model, [*dropouts, *getattr(self, "_checkpointed", ())]):
            yield

    # -- export -----------------------------------------------------------------------------------
    def export(self, role: str, folder: str | Path, write: bool = True) -> Path:
        """Write ``role``'s adapter as a standard PEFT folder.

        ``adapter_config.json`` + ``adapter_model.safetensors``, loadable with
        ``PeftModel.from_pretrained(base, folder)``. Written to a temporary sibling and renamed into place,
        so a crash mid-write never corrupts an adapter exported earlier. Sharded (FSDP2), gathering the
        adapter is a collective: every process calls this, and only the one with ``write`` writes.
        """
        adapter = self.adapter_for(role)
        folder = Path(folder)
        state = get_peft_model_state_dict(self.model, adapter_name=adapter)
        state = {k: full_tensor(v.detach()).to("cpu").contiguous() for k, v in state.items()}
        if not write:
            return folder
        config = self.model.peft_config[adapter]
        with atomic_folder(folder) as tmp:
            save_file(state, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
            config.save_pretrained(tmp)
            write_role_file(tmp, role, adapter, self.mode)
        return folder

    def load(self, role: str, folder: str | Path, key: str = "adapter") -> None:
        """Load a PEFT adapter folder (as :meth:`export` writes it) into ``role``'s adapter, in place.

        The folder must match the adapter's spec: every saved tensor lands on a LoRA weight of the same shape,
        every LoRA weight is covered, and the scaling (``lora_alpha``, rsLoRA) is the same, since a different
        alpha would silently rescale the update. Nothing is changed when a check fails.
        """
        adapter = self.adapter_for(role)
        folder = Path(folder)
        check_adapter_matches(self.model, folder, adapter, key, f"this run's {role} adapter",
                              f"set model.bank.adapters.{adapter} and the base to what the adapter was trained with")
        state = load_file(str(folder / "adapter_model.safetensors"))
        set_peft_model_state_dict(self.model, state, adapter_name=adapter)

    def _check_targets(self, base: nn.Module, spec: BankSpec) -> None:
        module_names = {name.rsplit(".", 1)[-1] for name, _ in base.named_modules()}
        for adapter, lora in spec.adapters.items():
            if isinstance(lora.target_modules, str):
                continue  # 'all-linear' or a regex: PEFT resolves it
            missing = [t for t in lora.target_modules if t not in module_names]
            if missing:
                linear = sorted({n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, nn.Linear)})
                raise ConfigError(f"model.bank.adapters.{adapter}.target_modules",
                                  f"the base model has no module named {missing}",
                                  f"use names from {linear}, or 'all-linear'")


def checkpoint_decoder_layers(model: nn.Module) -> list[nn.Module]:
    """Turn on Hugging Face's non-reentrant activation checkpointing of ``model``'s decoder layers (which keeps
    FSDP2's hooks outside the recomputed part); returns the layers, which :func:`gradient_pass_mode` must flag as
    training (Hugging Face checkpoints a layer only then)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name for it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]


@contextmanager
def gradient_pass_mode(model: nn.Module, training: list[nn.Module]) -> Iterator[None]:
    """``model`` in eval mode (no dropout) with only the modules in ``training`` flagged as training (their
    own flag, not their children's); eval mode again on exit."""
    model.eval()
    for module in training:
        module.training = True
    try:
        yield
    finally:
        model.eval()


def write_role_file(folder: Path, role: str, adapter: str, mode: str | None = None) -> None:
    """``abspo_role.json``: which role (and adapter, and training mode) an exported folder holds."""
    record = {"role": role, "adapter": adapter} | ({"mode": mode} if mode else {})
    (folder / "abspo_role.json").write_text(json.dumps(record) + "\n")


def lora_initial_value(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The initial value of LoRA tensor ``name``: PEFT's default (A: Kaiming-uniform with a = sqrt(5); B: zeros,
    so every adapter starts equal to the anchor), drawn from a generator keyed by the tensor's name. An adapter
    then starts the same whatever the torch RNG state, on every process, and when a sharded base is built on the
    meta device and each process fills in its own shards."""
    if ".lora_B." in name:
        return torch.zeros(shape)
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return nn.init.kaiming_uniform_(torch.empty(shape), a=math.sqrt(5), generator=generator)


def _saved_key(param_name: str) -> str:
    """The key PEFT saves an adapter parameter under: its name without the adapter's ('...lora_A.weight')."""
    parts = param_name.split(".")
    i = next(i for i, part in enumerate(parts[:-1]) if part.startswith("lora_"))
    return ".".join(parts[: i + 1] + parts[i + 2:])


def _keyed_like_model(model: nn.Module, adapter: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (keyed as in ``adapter_model.safetensors``) keyed by ``adapter``'s parameter names in ``model``."""
    return {n: state[_saved_key(n)].float().clone() for n, _ in model.named_parameters()
            if AdapterBank._adapter_of(n) == adapter}
