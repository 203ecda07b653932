"""AdapterBank: one LoRA adapter per role on one frozen base.

Roles (``attacker``, ``defender``) map to named LoRA adapters. In ABS every role has its own adapter, so
the two policies never share trainable parameters; mapping several roles to one adapter gives the
parameter-shared self-play baseline with the same code.

Why not PEFT's ``set_adapter`` / ``disable_adapter``? Both flip ``requires_grad`` on adapter weights as a
side effect (PEFT issues 1377, 2436; TRL issue 3031): an optimizer built by filtering ``requires_grad``
then silently holds nothing, and a role switch in the middle of a step freezes the other role. The bank
pins ``requires_grad=True`` on every adapter weight once, selects a role's parameters *by name*, and
switches roles by setting the active adapter on each LoRA layer directly, which only changes routing.

``anchor()`` routes around every adapter: the frozen base, the KL anchor. (That is the right anchor only
while adapters start at zero, i.e. LoRA B = 0, which is how they are created here.)
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from abspo.atomic import atomic_folder
from abspo.errors import ConfigError

ROLES = ("attacker", "defender")


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
        return {"roles": dict(self.roles), "adapters": {k: asdict(v) for k, v in self.adapters.items()}}


class AdapterBank(nn.Module):
    """LoRA adapters for every role on one frozen base, with role switching that never touches grads."""

    def __init__(self, base: nn.Module, spec: BankSpec):
        super().__init__()
        spec.validate()
        self.spec = spec
        names = list(spec.adapters)
        self._check_targets(base, spec)
        model = get_peft_model(base, spec.adapters[names[0]].peft_config(), adapter_name=names[0])
        for name in names[1:]:
            model.add_adapter(name, spec.adapters[name].peft_config())
        self.model: PeftModel = model
        if not any(p.is_meta for p in model.parameters()):
            with torch.no_grad():
                for pname, param in self.adapter_state_dict().items():
                    param.copy_(lora_initial_value(pname, tuple(param.shape)))
        self._layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        # Pin grads once: every adapter weight trains, every base weight is frozen. Nothing below flips them.
        for pname, param in model.named_parameters():
            param.requires_grad_(self._adapter_of(pname) is not None)
        self._route(names[0], enabled=True)

    # -- parameters -------------------------------------------------------------------------------
    @staticmethod
    def _adapter_of(param_name: str) -> str | None:
        parts = param_name.split(".")
        for i, part in enumerate(parts[:-1]):
            if part.startswith("lora_"):
                return parts[i + 1]
        return None

    def owner_of(self, param_name: str) -> str | None:
        """The adapter a parameter (named as in this bank or in a module holding it) belongs to; None for the
        frozen base. What checkpoints keep: the trainable state and nothing else."""
        return self._adapter_of(param_name)

    @property
    def mode(self) -> str:
        """``bipolicy`` (a role per adapter) or ``shared_lora`` (one adapter plays every role)."""
        return "shared_lora" if len(set(self.spec.roles.values())) == 1 else "bipolicy"

    def adapter_parameters(self, adapter: str) -> list[nn.Parameter]:
        """The trainable parameters of one adapter, selected by name (never by requires_grad)."""
        if adapter not in self.spec.adapters:
            raise KeyError(adapter)
        return [p for n, p in self.model.named_parameters() if self._adapter_of(n) == adapter]

    def role_parameters(self, role: str) -> list[nn.Parameter]:
        return self.adapter_parameters(self.adapter_for(role))

    def adapter_for(self, role: str) -> str:
        return self.spec.roles[role]

    def base_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.model.named_parameters() if self._adapter_of(n) is None)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """All adapter tensors, keyed as in the module's state dict: the whole trainable state."""
        return {n: p.detach() for n, p in self.model.named_parameters() if self._adapter_of(n) is not None}

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
    def anchor(self) -> Iterator[PeftModel]:
        """Run the frozen base with every adapter switched off: the KL anchor."""
        previous = self._active
        self._route(previous[0], enabled=False)
        try:
            yield self.model
        finally:
            self._route(*previous)

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
        from abspo.sharding import full_tensor

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
        saved_config = saved_adapter_config(folder, key)
        check_adapter_fits(self.model, folder, adapter, key, f"this run's {role} adapter",
                           f"set model.bank.adapters.{adapter} and the base to what the adapter was trained with")
        spec = self.model.peft_config[adapter]
        for field_name, ours in (("lora_alpha", spec.lora_alpha), ("use_rslora", spec.use_rslora)):
            if saved_config.get(field_name, ours) != ours:
                raise ConfigError(key, f"adapter {str(folder)!r} has {field_name}={saved_config.get(field_name)!r}, "
                                  f"this run's {role} adapter {field_name}={ours!r}",
                                  f"set model.bank.adapters.{adapter} to the spec the adapter was trained with")
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


def saved_adapter_config(folder: Path, key: str) -> dict:
    """``folder``'s ``adapter_config.json``; a missing or damaged one names ``key`` (PEFT's own reader would fail
    with an error that reads like a base mismatch)."""
    path = folder / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(key, f"cannot read {path} ({type(err).__name__})",
                          "point at a PEFT adapter folder, e.g. checkpoints/<run>/adapters/defender") from None
    if not isinstance(config, dict):
        raise ConfigError(key, f"{path} is not a JSON object", "re-export the adapter, or point at another folder")
    return config


def saved_adapter_shapes(folder: Path, key: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of ``folder``'s ``adapter_model.safetensors``; a damaged file names ``key``."""
    try:
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise ConfigError(key, f"{folder / 'adapter_model.safetensors'} is not a readable safetensors file "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:120]})",
                          "re-export the adapter, or point at another folder") from None


def check_adapter_fits(model: PeftModel, folder: Path, adapter: str, key: str, base_name: str,
                       fix: str = "use it with the base and LoRA spec it was trained with") -> None:
    """Every tensor of ``folder``'s adapter file matches a same-shaped LoRA weight of ``adapter``, and vice versa.

    PEFT loads non-strictly: weights for modules the base lacks are dropped with a warning, and LoRA modules
    the file does not cover silently keep their initial (zero) update. Either means another base (or another
    LoRA spec), so both are refused with ``key`` named.
    """
    saved = saved_adapter_shapes(folder, key)
    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model, adapter_name=adapter).items()}
    extra = sorted(set(saved) - set(expected))
    missing = sorted(set(expected) - set(saved))
    wrong = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
    if extra:
        raise ConfigError(key, f"adapter {str(folder)!r} has {len(extra)} weights for modules that {base_name} "
                          f"lacks (e.g. {extra[0]})", fix)
    if missing:
        raise ConfigError(key, f"adapter {str(folder)!r} lacks {len(missing)} LoRA weights that {base_name} needs "
                          f"(e.g. {missing[0]})", fix)
    if wrong:
        raise ConfigError(key, f"adapter {str(folder)!r} has weights of the wrong shape for {base_name} "
                          f"(e.g. {wrong[0]}: {saved[wrong[0]]} vs {expected[wrong[0]]})", fix)
