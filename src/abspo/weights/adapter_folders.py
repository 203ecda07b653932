"""PEFT adapter folders on disk: find one (a folder or a hub id), read its config, tensors and shapes, and check
that it fits an adapter of a model, each failure one ConfigError naming the key that pointed at it.

What the bank (``init_from``, :meth:`~abspo.weights.bank.AdapterBank.load`), the full policy (a merged start) and the
evaluation players (adapter folders as players) share; the bank itself only routes and trains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file

from abspo.core.digest import file_sha256
from abspo.core.errors import ConfigError


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


def check_adapter_matches(model: PeftModel, folder: Path, adapter: str, key: str, whose: str, fix: str) -> None:
    """``folder``'s adapter fits ``adapter`` of ``model`` (:func:`check_adapter_fits`: every tensor, same shapes)
    and has its scaling (``lora_alpha``, rsLoRA): a different alpha would silently rescale every update it made."""
    check_adapter_fits(model, folder, adapter, key, whose, fix)
    saved = saved_adapter_config(folder, key)
    for field_name in ("lora_alpha", "use_rslora"):
        mine = getattr(model.peft_config[adapter], field_name)
        if saved.get(field_name, mine) != mine:
            raise ConfigError(key, f"adapter {str(folder)!r} has {field_name}={saved.get(field_name)!r}, {whose} "
                              f"{field_name}={mine!r}", fix)


def resolve_adapter_folder(source: str, key: str) -> Path:
    """The local folder of a PEFT adapter: ``source`` itself, or a hub id's snapshot (from the Hugging Face cache;
    fetched only where your environment reaches the hub, as for a base given by hub id)."""
    path = Path(source).expanduser()
    looks_like_path = source.startswith((".", "/", "~")) or path.exists() or source.count("/") != 1
    if not looks_like_path:
        from huggingface_hub import snapshot_download

        patterns = ["adapter_config.json", "adapter_model.safetensors"]
        try:
            return Path(snapshot_download(source, allow_patterns=patterns, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached: try the hub, where the user's environment allows it
            pass
        try:
            return Path(snapshot_download(source, allow_patterns=patterns))
        except Exception as err:  # noqa: BLE001
            raise ConfigError(key, f"{source!r} is neither a folder nor a hub id in your Hugging Face cache "
                              f"({type(err).__name__})", "point at a PEFT adapter folder, or download the adapter "
                              "once (huggingface-cli download)") from None
    if not path.is_dir():
        raise ConfigError(key, f"{source!r} {'is a file, not' if path.exists() else 'does not exist as'} a folder",
                          "point at a PEFT adapter folder (adapter_config.json + adapter_model.safetensors), "
                          "e.g. checkpoints/warm-start/defender")
    return path


@dataclass
class InitialAdapter:
    """A starting adapter as read: its folder, its tensors (keyed as PEFT saves them) and what a checkpoint records
    of it (``init_from`` and the sha256 of its weights)."""

    folder: Path
    state: dict[str, torch.Tensor]
    source: dict[str, str]


def read_initial_adapter(init_from: str, key: str) -> InitialAdapter:
    """The adapter ``init_from`` names, read; safetensors only (a pickled ``adapter_model.bin`` can run code when loaded, and
    is refused)."""
    folder = resolve_adapter_folder(init_from, key)
    saved_adapter_config(folder, key)
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        pickled = (folder / "adapter_model.bin").is_file()
        raise ConfigError(key, f"{folder} has no adapter_model.safetensors" + (
            " (only a pickled adapter_model.bin, which abspo does not load: unpickling can run code)" if pickled else ""),
                          "convert it once with safetensors (PeftModel.save_pretrained(..., safe_serialization=True))"
                          if pickled else "point at a PEFT adapter folder")
    saved_adapter_shapes(folder, key)  # a damaged file names the key
    return InitialAdapter(folder, load_file(str(weights)), {"init_from": init_from, "sha256": file_sha256(weights)})
