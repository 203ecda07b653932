"""Players for evaluation: a role loaded from an adapter folder, the bare base, or ``vanilla``; greedy turns.

Evaluation compares roles that were trained in different runs (cross-play) or checks one defender against
fixed benchmarks (safety report). Both need the same three things, kept here:

* **Naming a player.** ``base`` is the base model without any adapter, ``vanilla`` is the attacker that
  passes every seed through unchanged (the no-attack baseline), and anything else is a PEFT adapter folder
  as written by :class:`~abspo.callbacks.AdapterExport` / :meth:`AdapterBank.export`
  (``checkpoints/<run>/adapters/<role>``), or a whole model folder (``config.json`` + weights) as a
  ``shared_full`` run exports it. ``label=path`` gives a player a display name.
* **Holding several players in memory at once.** :class:`PlayerPool` loads the base once and every adapter
  once, onto one ``PeftModel`` under distinct names (``load_adapter``), and switches between them with
  PEFT's own ``set_adapter`` / ``disable_adapter``. The trainer's :class:`~abspo.weights.bank.AdapterBank` avoids
  those calls because they flip ``requires_grad``; evaluation never trains, so the side effect is harmless
  here, and loading through PEFT checks the exported folders exactly the way a user of them would. A
  checkpoint's ``adapter_config.json`` names its base loosely (a hub id, a cache folder, nothing for the
  random test model), so the real compatibility check is structural: after loading, every tensor in the
  adapter file must have landed on a LoRA weight of the same shape, and every LoRA weight of the
  adapter must have come from the file. A differing base *name* only warns.
* **Playing turns deterministically.** Evaluation decodes greedily (temperature 0), in batches of prompts
  of similar length (sorting by length cuts padding, which dominates CPU time with long jailbreak
  templates), through :func:`abspo.rl.rollout.generate`, with the prompt templates and parsing of
  :mod:`abspo.game.rules`, so an evaluated role sees exactly the text format it was trained on.

It also holds the small helpers the report writers share (:func:`jsonl`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from peft import PeftModel
from torch import nn

from abspo.core import run_folder
from abspo.weights.adapter_folders import check_adapter_fits, saved_adapter_config, saved_adapter_shapes
from abspo.core.errors import ConfigError
from abspo.game.rules import (GameConfig, attacker_forfeits, attacker_prompt, defender_prompt, read_attacker_turn,
                        read_defender_turn)
from abspo.weights.models import BaseModel, load_base
from abspo.rl.rollout import generate_greedy

log = logging.getLogger(__name__)

BASE = "base"
VANILLA = "vanilla"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


# -- naming players ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlayerSpec:
    """One player: ``vanilla`` (attackers only), ``base``, a PEFT adapter folder, or a full model folder."""

    label: str
    """Display name in reports and matrices."""
    kind: Literal["vanilla", "base", "adapter", "full"]
    path: Path | None = None
    """The adapter or model folder (``kind`` 'adapter' or 'full')."""
    key: str = ""
    """The argument it came from, for error messages."""

    @property
    def needs_model(self) -> bool:
        return self.kind != VANILLA

    def describe(self) -> dict:
        out: dict = {"label": self.label, "kind": self.kind}
        if self.path is not None:
            out["path"] = str(self.path)
            role_file = self.path / "abspo_role.json"
            if role_file.is_file():
                try:
                    out["exported_as"] = json.loads(role_file.read_text(encoding="utf-8")).get("role")
                except (json.JSONDecodeError, AttributeError):
                    pass
        return out


def parse_player(text: str, key: str, role: Literal["attacker", "defender"]) -> PlayerSpec:
    """``'base'``, ``'vanilla'`` (attacker only), ``'path/to/adapter'`` or ``'label=path/to/adapter'``.

    Raises :class:`ConfigError` naming ``key`` for a missing folder, a folder that is not a PEFT adapter,
    or ``vanilla`` in the defender seat.
    """
    label, sep, rest = text.partition("=")
    if sep and label and "/" not in label and rest:
        text = rest
    else:
        label = ""
    if text in (BASE, VANILLA):
        if text == VANILLA and role != "attacker":
            raise ConfigError(key, "'vanilla' is the attacker that passes seeds through unchanged; a defender has to "
                              "answer", "use 'base' for the base model without an adapter, or an adapter folder")
        return PlayerSpec(label or text, text, None, key)  # type: ignore[arg-type]
    path = Path(text).expanduser()
    if not path.is_dir():
        raise ConfigError(key, f"adapter folder {text!r} does not exist",
                          f"give a PEFT adapter folder (e.g. checkpoints/<run>/adapters/{role}), 'base'"
                          + (" or 'vanilla'" if role == "attacker" else ""))
    missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
    if missing and is_model_folder(path):
        return PlayerSpec(label or default_label(path), "full", path.resolve(), key)
    if missing:
        raise ConfigError(key, f"{text!r} is not a PEFT adapter folder (no {' or '.join(missing)}) nor a model "
                          "folder (config.json + *.safetensors)",
                          "point at a folder written by abspo's export, PeftModel.save_pretrained or save_pretrained")
    return PlayerSpec(label or default_label(path), "adapter", path.resolve(), key)


def is_model_folder(path: Path) -> bool:
    """A whole Hugging Face model (``config.json`` and safetensors weights), as a shared_full run exports."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def default_label(path: Path) -> str:
    """``<run>/<role>`` for abspo's ``checkpoints/<run>/adapters/<role>`` layout, else the folder's name."""
    path = path.resolve()
    if path.parent.name == run_folder.ADAPTERS and path.parent.parent.name:
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def parse_players(texts: Sequence[str], key: str, role: Literal["attacker", "defender"]) -> list[PlayerSpec]:
    """Parse a list of players; labels must be unique (use ``label=path`` to tell folders apart)."""
    if not texts:
        raise ConfigError(key, f"no {role}s given", f"list at least one {role}, e.g. base")
    specs = [parse_player(t, f"{key}[{i}]", role) for i, t in enumerate(texts)]
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.label in seen:
            raise ConfigError(spec.key, f"the label {spec.label!r} is already used by {seen[spec.label]}",
                              "name players apart with label=path, e.g. run1=checkpoints/run1/adapters/" + role)
        seen[spec.label] = spec.key
    return specs


# -- holding players --------------------------------------------------------------------------------------
class PlayerPool:
    """One base model in memory with every adapter loaded once; :meth:`model_for` switches between them."""

    def __init__(self, model: nn.Module, tokenizer, adapter_names: dict[Path, str] | None = None,
                 full_models: dict[Path, nn.Module] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.adapter_names = dict(adapter_names or {})
        self.full_models = dict(full_models or {})

    @classmethod
    def load(cls, base: BaseModel, specs: Sequence[PlayerSpec]) -> PlayerPool:
        """Load ``base`` once, every distinct adapter folder among ``specs`` once onto it, and every full model
        folder once as a model of its own (in the base's dtype, with the base's tokenizer)."""
        folders: dict[Path, PlayerSpec] = {}
        for spec in specs:
            if spec.kind == "adapter" and spec.path not in folders:
                folders[spec.path] = spec
        model, tokenizer = load_base(base)
        full_models: dict[Path, nn.Module] = {}
        for spec in specs:
            if spec.kind == "full" and spec.path not in full_models:
                try:
                    full_models[spec.path], _ = load_base(dataclasses.replace(base, name_or_path=str(spec.path)))
                except ConfigError as err:
                    raise ConfigError(spec.key, err.problem, err.fix) from None
                _check_same_architecture(full_models[spec.path], model, spec, base)
        names: dict[Path, str] = {}
        for i, (folder, spec) in enumerate(folders.items()):
            name = f"player{i}"
            _warn_on_base_name(folder, base)
            # Damaged files are one clear line each, not PEFT's or safetensors' tracebacks.
            saved_adapter_config(folder, spec.key)
            saved_adapter_shapes(folder, spec.key)
            try:
                if i == 0:
                    model = PeftModel.from_pretrained(model, folder, adapter_name=name, is_trainable=False)
                else:
                    model.load_adapter(folder, adapter_name=name, is_trainable=False)
            except (RuntimeError, ValueError, KeyError) as err:
                raise ConfigError(spec.key, f"adapter {str(folder)!r} does not fit base {base.name_or_path!r} "
                                  f"({str(err).strip().splitlines()[0][:300]})",
                                  "evaluate it on the base it was trained on (--base.name_or_path)") from None
            check_adapter_fits(model, folder, name, spec.key, f"base {base.name_or_path!r}",
                               "evaluate it on the base it was trained on (--base.name_or_path)")
            names[folder] = name
        model.eval()
        return cls(model, tokenizer, names, full_models)

    @contextmanager
    def model_for(self, spec: PlayerSpec) -> Iterator[nn.Module]:
        """The model playing as ``spec``: its adapter active, or every adapter off for ``base``."""
        if spec.kind == VANILLA:
            raise ValueError("the vanilla attacker has no model")
        if spec.kind == "full":
            yield self.full_models[spec.path]
        elif spec.kind == "adapter":
            self.model.set_adapter(self.adapter_names[spec.path])  # no grads are taken: its requires_grad flip is moot
            yield self.model
        elif self.adapter_names:
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.model


def _check_same_architecture(model: nn.Module, base_model: nn.Module, spec: PlayerSpec, base: BaseModel) -> None:
    """A full model player must have been trained from ``base``: the same parameter names and shapes."""
    base_model = base_model.get_base_model() if hasattr(base_model, "get_base_model") else base_model
    ours = {n: tuple(p.shape) for n, p in base_model.named_parameters()}
    theirs = {n: tuple(p.shape) for n, p in model.named_parameters()}
    if ours != theirs:
        differ = sorted(set(ours) ^ set(theirs)) or sorted(k for k in ours if ours[k] != theirs[k])
        raise ConfigError(spec.key, f"model folder {str(spec.path)!r} is not of base {base.name_or_path!r}'s "
                          f"architecture (e.g. {differ[0]})", "evaluate it on the base it was trained from (--base.name_or_path)")


def _warn_on_base_name(folder: Path, base: BaseModel) -> None:
    try:
        recorded = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (json.JSONDecodeError, AttributeError, OSError):
        return
    if recorded and Path(str(recorded)).name.lower() != Path(base.name_or_path).name.lower():
        warnings.warn(f"adapter {folder} records base {recorded!r}, evaluating on {base.name_or_path!r}; the shapes "
                      "are checked, but make sure it is the same model", stacklevel=3)


# -- playing turns ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rewrite:
    """What an attacker made of one seed."""

    seed: str
    prompt: str
    """What the defender sees: the parsed ``<answer>``, or the seed itself for the vanilla attacker."""
    output: str | None = None
    """Raw attacker output including the prefill; None for the vanilla attacker."""
    well_formed: bool | None = None
    forfeited: bool = False
    """Nothing playable in the attacker's turn (the game's rule): no defender turn, a failed attack."""


def vanilla_rewrites(seeds: Sequence[str]) -> list[Rewrite]:
    return [Rewrite(s, s) for s in seeds]


def attacker_rewrites(model, tokenizer, seeds: Sequence[str], game: GameConfig, batch_size: int,
                      harmful: bool = True) -> list[Rewrite]:
    """One greedy attacker turn per seed, with the game's attacker template and prefill."""
    prompts = [attacker_prompt(tokenizer, game, s, harmful) for s in seeds]
    texts = generate_greedy(model, tokenizer, prompts, game.max_new_tokens_attacker, batch_size)
    out = []
    for seed, text in zip(seeds, texts):
        output, parsed = read_attacker_turn(game, text)
        out.append(Rewrite(seed, parsed.text, output, parsed.well_formed, attacker_forfeits(parsed)))
    return out


@dataclass(frozen=True)
class Reply:
    """What a defender made of one prompt."""

    output: str
    """Raw completion."""
    response: str
    """What the judge sees: the ``<answer>`` under ``defender_reasoning``, else the stripped output."""
    well_formed: bool | None = None


def visible_reply(game: GameConfig, output: str) -> Reply:
    """The part of a defender's output the judge sees (the rule training uses: :func:`abspo.game.rules.read_defender_turn`)."""
    return Reply(output, *read_defender_turn(game, output))


def defender_replies(model, tokenizer, prompts: Sequence[str], game: GameConfig, batch_size: int) -> list[Reply]:
    """One greedy defender turn per prompt, with the game's system prompt and reasoning format."""
    rendered = [defender_prompt(tokenizer, game, p) for p in prompts]
    texts = generate_greedy(model, tokenizer, rendered, game.max_new_tokens_defender, batch_size)
    return [visible_reply(game, t) for t in texts]


class ModelDefender:
    """A defender as a callable ``prompts -> responses``: greedy, batched, in the game's format.

    ``model`` is the model itself, or a zero-argument callable returning a context manager that yields it,
    so that a role of a live bank can be evaluated without copying it::

        ModelDefender(functools.partial(module.bank.role, "defender"), module.tokenizer, module.game)
    """

    def __init__(self, model: nn.Module | Callable[[], AbstractContextManager[nn.Module]], tokenizer,
                 game: GameConfig | None = None, batch_size: int = 16):
        self._model = model
        self.tokenizer = tokenizer
        self.game = game or GameConfig()
        self.batch_size = batch_size

    def replies(self, prompts: Sequence[str]) -> list[Reply]:
        ctx = nullcontext(self._model) if isinstance(self._model, nn.Module) else self._model()
        with ctx as model:
            was_training = model.training
            model.eval()
            try:
                return defender_replies(model, self.tokenizer, prompts, self.game, self.batch_size)
            finally:
                model.train(was_training)

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        return [r.response for r in self.replies(prompts)]


# -- writing results --------------------------------------------------------------------------------------
def jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
