"""Memory planner: per-device memory of a self-play run, from its config, before anything is loaded.

``abspo plan --config configs/qwen2.5-14b-fsdp.yaml`` prints one table per phase and says whether the run fits
the device and what to change if it does not. It is arithmetic on the architecture (no weights are loaded,
nothing is downloaded for the built-in Qwen2.5 shapes), so it runs on a laptop for a 14B plan.

What a device holds, by phase (the step runs them one after another, so the peak is the persistent part plus
the largest phase):

- **persistent**: the frozen base (its dtype; a 1/N shard under FSDP), every adapter's LoRA weights, gradients
  and AdamW moments (float32: 16 bytes per LoRA parameter; sharded under FSDP), and a colocated judge model.
  ``model.mode: shared_lora`` has one adapter; ``shared_full`` has no adapter but a float32 trained copy of the
  base with its gradients and AdamW moments (16 bytes per base parameter) beside the frozen base, its anchor,
  which it holds in float32 too (:mod:`abspo.weights.full_policy`).
- **rollouts**: the KV cache of this device's games for the longer turn (2 x layers x KV heads x head dim x
  sequence x games x dtype bytes), the per-step sampling buffers (float32 logits and keyed-sampling noise over
  the vocabulary), and under FSDP the gathered full base (generation unshards the model once instead of
  re-gathering every layer for every token).
- **update**: for one micro-batch (``micro_batch_size`` rows at the longest length, fewer where
  ``micro_batch_tokens`` caps them), the activations saved for backward (per token and layer, see
  :func:`activation_bytes_per_token_layer`; with activation checkpointing only each layer's input plus one
  layer's activations), the completion logits (for the architectures whose head computes log-probs in place,
  one chunk of rows at a time, :class:`abspo.rl.logprobs.HeadTokenLogprobs`; for others the model-dtype logits and
  their gradient, :class:`abspo.rl.logprobs.TokenLogprobs`), and under FSDP two gathered layers (the current one
  and the prefetched next).
- **judge** (a colocated judge model): the KV cache of its queries for this device's games.
- **runtime**: the framework's own memory (CUDA context and allocator slack on a GPU; the Python + torch
  process on a CPU), a constant you can set.

The activation count is what autograd keeps for a Qwen2/Llama decoder layer with LoRA on every linear layer and
SDPA attention (no sequence-squared term), equal byte for byte to the saved tensors (``tests/test_planner.py``).
The whole plan is an upper bound on tensors (every row at the longest length); ``tools/memory_plan.py`` measures
it on CPU against peak RSS (``docs/strategies.md``) and against the peak of tensor memory
(``docs/performance.md``).
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field, replace

from abspo.core.errors import ConfigError
from abspo.rl.logprobs import FUSED_HEAD_MODEL_TYPES, ROWS_PER_CHUNK, head_chunk_rows

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
JUDGE_PARAMS = {"WildGuardJudge": 7.25e9, "LlamaGuardJudge": 8.03e9}
"""Parameters of the model-based judges' default checkpoints (WildGuard: Mistral-7B-v0.3; Llama Guard 3 8B)."""


@dataclass(frozen=True)
class Architecture:
    """The shapes of a decoder-only causal LM that memory depends on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool = True
    """Qwen2 has q/k/v biases; Llama-style models (SmolLM2) do not."""
    fused_head: bool = True
    """Scoring computes log-probs inside the LM head, in chunks, so no [tokens, vocab] logits exist
    (:data:`abspo.rl.logprobs.FUSED_HEAD_MODEL_TYPES`); otherwise the model's logits and their gradient do."""

    @classmethod
    def from_hf_config(cls, config) -> Architecture:
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                   config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                   config.vocab_size, bool(getattr(config, "tie_word_embeddings", False)),
                   qkv_bias=getattr(config, "model_type", "") == "qwen2",
                   fused_head=getattr(config, "model_type", "") in FUSED_HEAD_MODEL_TYPES)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer: q, k, v, o, gate, up, down."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]

    def layer_params(self) -> int:
        weights = sum(a * b for a, b in self.linear_shapes())
        bias = (self.hidden + 2 * self.kv_dim) if self.qkv_bias else 0
        return weights + bias + 2 * self.hidden  # + the two RMSNorm weights

    def base_params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * self.layer_params() + embeddings + self.hidden  # + the final norm

    def lora_params(self, r: int) -> int:
        """LoRA on every linear layer of every decoder layer (PEFT's 'all-linear', which leaves out the LM head)."""
        return self.layers * sum(r * (a + b) for a, b in self.linear_shapes())


def activation_bytes_per_token_layer(arch: Architecture, dtype_bytes: int, trained_bytes: int = 4,
                                     lora_rank: int = 0, sequence: int = 0) -> int:
    """Bytes autograd keeps per token and decoder layer in the gradient pass (no activation checkpointing), for a
    model computing in ``dtype_bytes`` whose trained weights (LoRA, or a shared_full copy) are ``trained_bytes``,
    on sequences of ``sequence`` tokens.

    Only what backward reads is kept, and a frozen linear layer reads no input (it needs no weight gradient), so:

    - each RMSNorm: its input in float32 (upcast first when the model is 16-bit) and its float32 statistic;
    - attention: q, K and V repeated to every query head (a padded batch, which abspo's always may be, takes
      SDPA's masked path, which does not use grouped KV), the attention output, all in the model's dtype, SDPA's
      float32 log-sum-exp per head, and the layer's copy of the attention mask (``sequence`` values per token);
    - MLP: gate, SiLU(gate) and up, in the model's dtype;
    - the trained layers' inputs. Same dtype as the model: one copy per shared input (q/k/v read one normed
      input, gate/up another, down the SiLU·up product; o reads the attention output, already kept). A 16-bit
      model with float32 LoRA: PEFT casts each LoRA layer's input to float32 on its own, so seven float32
      copies (six hidden-sized, down's intermediate-sized);
    - each LoRA's rank-r intermediate, in float32.

    Equal, byte for byte, to the storages saved-tensor hooks see on a Qwen2 layer with float32 LoRA over a bf16 or
    a float32 base (``tests/test_planner.py``)."""
    h, i, b = arch.hidden, arch.intermediate, dtype_bytes
    norms = 2 * (h + 1) * 4
    attention = 4 * h * b + arch.heads * 4 + sequence * b
    mlp = 3 * i * b
    trained_inputs = (2 * h + i) * b if b == trained_bytes else (6 * h + i) * trained_bytes
    return norms + attention + mlp + trained_inputs + 7 * lora_rank * 4


def longest_turn_tokens(new_tokens_attacker: int, new_tokens_defender: int, prompt_tokens: int | None = None) -> int:
    """The longest turn a plan sizes for: its prompt (``prompt_tokens``; by default 256 for the chat template,
    instruction and seed, plus the attacker's rewrite in the defender's prompt) and the larger new-token budget."""
    prompt = prompt_tokens if prompt_tokens is not None else 256 + new_tokens_attacker
    return prompt + max(new_tokens_attacker, new_tokens_defender)


@dataclass
class PlanInputs:
    """Everything the plan depends on (built from a training config by :func:`inputs_from_config`)."""

    arch: Architecture
    base_dtype: str = "bfloat16"
    lora_ranks: list[int] = field(default_factory=lambda: [16, 16])
    mode: str = "bipolicy"
    """model.mode: bipolicy, shared_lora (one adapter) or shared_full (a trained float32 copy of the base)."""
    devices: int = 1
    sharded: bool = False
    """FSDP2: base, LoRA and optimizer states sharded over ``devices``; else each device holds all (DDP)."""
    games: int = 8
    """Games per batch over all devices (batch size x GRPO group size)."""
    group_size: int = 1
    """GRPO group size: a device plays whole groups (its share of the seeds, each ``group_size`` times)."""
    prompt_tokens: int | None = None
    """Tokens of the longest turn prompt: chat template + instruction + seed, and for the defender the attacker's
    turn. None: 256 + ``new_tokens_attacker``."""
    new_tokens_attacker: int = 96
    new_tokens_defender: int = 96
    micro_batch_size: int = 8
    micro_batch_tokens: int | None = None
    """model.algorithm.micro_batch_tokens: at most this many padded tokens per micro-batch (a row longer than that
    runs alone)."""
    activation_checkpointing: bool = False
    float32_kl: bool = False
    """model.algorithm.kl_precision: float32: the KL's no-gradient passes upcast each weight as it is read, and the
    LM head's float32 copy lives through its chunks (abspo.rl.precision)."""
    head_adapters: list[bool] = field(default_factory=list)
    """Per adapter (as ``lora_ranks``): whether it targets the LM head (``lm_head`` in ``target_modules``). Its
    LoRA weights on the head count, and scoring takes the plain path (the model's logits and their gradient), as
    a LoRA'd head is no plain linear layer (PEFT's float32 branch output is transient and adds nothing to that
    path's peak: ``tests/test_planner.py``)."""
    judge_params: float = 0.0
    """Parameters of a judge model on the same device (0: heuristic or remote judge)."""
    judge_dtype_bytes: int = 2
    judge_tokens: int = 1024
    """Prompt + verdict tokens of one judge query (KV cache while the judge runs)."""
    device_memory_gib: float | None = None
    runtime_gib: float = 1.0
    """Framework memory: ~1 GiB of CUDA context and allocator slack on a GPU."""
    headroom: float = 0.9
    """Share of the device memory a plan may use (fragmentation, spikes)."""

    @property
    def longest_tokens(self) -> int:
        return longest_turn_tokens(self.new_tokens_attacker, self.new_tokens_defender, self.prompt_tokens)

    @property
    def micro_batch_rows(self) -> int:
        """Rows of the largest micro-batch: at most this device's games and ``micro_batch_size``."""
        return min(self.micro_batch_size, max(1, self.games_per_device))

    @property
    def games_per_device(self) -> int:
        """The busiest device's games: seeds are shared out whole, each played ``group_size`` times."""
        return math.ceil(self.games / self.group_size / self.devices) * self.group_size


@dataclass
class MemoryPlan:
    inputs: PlanInputs
    persistent: dict[str, float]
    phases: dict[str, dict[str, float]]
    """phase -> item -> bytes."""

    @property
    def persistent_bytes(self) -> float:
        return sum(self.persistent.values())

    def phase_bytes(self, phase: str) -> float:
        return sum(self.phases[phase].values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_bytes)

    @property
    def peak_bytes(self) -> float:
        return self.persistent_bytes + self.phase_bytes(self.peak_phase) + self.inputs.runtime_gib * GIB

    @property
    def fits(self) -> bool | None:
        if self.inputs.device_memory_gib is None:
            return None
        return self.peak_bytes <= self.inputs.device_memory_gib * GIB * self.inputs.headroom

    def advice(self) -> list[str]:
        """What to change when the plan does not fit, largest lever first."""
        if self.fits is not False:
            return []
        p, out = self.inputs, []
        phase = self.peak_phase
        if phase == "update":
            if not p.activation_checkpointing:
                out.append("turn on activation checkpointing (model.algorithm.activation_checkpointing: true)")
            if p.micro_batch_tokens is not None:
                if p.micro_batch_rows > 1 and p.micro_batch_tokens > p.longest_tokens:
                    out.append(f"lower model.algorithm.micro_batch_tokens (now {p.micro_batch_tokens}; at "
                               f"{p.longest_tokens}, the longest turn, a micro-batch holds one such turn)")
            elif p.micro_batch_size > 1:
                out.append(f"lower model.algorithm.micro_batch_size (now {p.micro_batch_size}), or cap the padded "
                           "tokens of a micro-batch (model.algorithm.micro_batch_tokens)")
        if phase in ("rollouts", "judge"):
            out.append("fewer games per device: more devices, or a smaller data.batch_size; or shorter "
                       "model.game.max_new_tokens_*")
        if self.persistent.get("judge", 0) > 0:
            out.append("move the judge off the training devices (abspo.judges.RemoteJudge on a serving engine)")
        if not p.sharded and self.persistent["base"] > 0.25 * p.device_memory_gib * GIB:
            out.append("shard the base with FSDP2 (configs/qwen2.5-14b-fsdp.yaml)")
        out.append("or use devices with more memory")
        return out

    def table(self) -> str:
        p = self.inputs
        gib = lambda b: f"{b / GIB:8.2f}"  # noqa: E731
        mode = f"FSDP2 over {p.devices}" if p.sharded else (f"DDP x{p.devices}" if p.devices > 1 else "1 device")
        lines = [f"per-device memory, {mode}, base {p.base_dtype}, {p.games_per_device} games per device, "
                 f"micro-batch {p.micro_batch_size}"
                 + (f" (at most {p.micro_batch_tokens} tokens)" if p.micro_batch_tokens else "")
                 + (", activation checkpointing" if p.activation_checkpointing else ""),
                 "", f"{'':34}{'GiB':>8}", "persistent"]
        lines += [f"  {k:32}{gib(v)}" for k, v in self.persistent.items()]
        for phase, items in self.phases.items():
            lines.append(f"{phase}{' (peak)' if phase == self.peak_phase else ''}")
            lines += [f"  {k:32}{gib(v)}" for k, v in items.items()]
        lines.append(f"runtime{'':27}{gib(p.runtime_gib * GIB)}")
        lines.append(f"{'peak':34}{gib(self.peak_bytes)}")
        if p.device_memory_gib is not None:
            budget = p.device_memory_gib * p.headroom
            lines.append(f"{'budget':34}{budget:8.2f}  ({p.headroom:.0%} of {p.device_memory_gib:g} GiB): "
                         + ("fits" if self.fits else "DOES NOT FIT"))
            lines += [f"  - {a}" for a in self.advice()]
        return "\n".join(lines)


def plan_memory(p: PlanInputs) -> MemoryPlan:
    """The per-device memory of one self-play step (module docstring)."""
    a, b = p.arch, DTYPE_BYTES[p.base_dtype]
    shard = p.devices if p.sharded else 1
    on_head: list[int] = []  # ranks of the adapters on the LM head
    if p.mode == "shared_full":  # rollouts and updates run on the float32 trained copy
        trained, name, compute, rank = a.base_params(), "policy", 4, 0
    else:
        ranks = p.lora_ranks[: 1 if p.mode == "shared_lora" else None]
        trained, name, compute, rank = sum(a.lora_params(r) for r in ranks), "LoRA", b, max(ranks)
        on_head = [r for r, adapted in zip(ranks, p.head_adapters) if adapted]
        trained += sum(r * (a.hidden + a.vocab) for r in on_head)
        if on_head:
            a = replace(a, fused_head=False)
    persistent = {
        "base": a.base_params() * (4 if p.mode == "shared_full" else b) / shard,  # shared_full: a float32 anchor
        f"{name} weights (fp32)": trained * 4 / shard,
        f"{name} grads (fp32)": trained * 4 / shard,
        "AdamW moments (fp32)": trained * 8 / shard,
        "judge": p.judge_params * p.judge_dtype_bytes,
    }
    games = p.games_per_device
    longest, new_tokens = p.longest_tokens, max(p.new_tokens_attacker, p.new_tokens_defender)
    kv = 2 * a.layers * a.kv_dim * compute
    rollouts = {
        "KV cache": kv * longest * games,
        "sampling buffers": games * a.vocab * (4 * 3 + 8 * 2),  # fp32 logits/tempered/perturbed, fp64 noise
    }
    if p.sharded:
        rollouts["gathered base (generation)"] = a.base_params() * b * (1 - 1 / shard)
    # the largest micro-batch: its rows at the longest length, or as many padded tokens as the cap lets in
    # (shorter rows fill it: a micro-batch of several rows pads to at most the cap; a longer row runs alone)
    rows = p.micro_batch_rows
    tokens, completion = rows * longest, rows * new_tokens
    if p.micro_batch_tokens is not None:
        tokens = min(tokens, max(p.micro_batch_tokens, longest))
        completion = min(completion, max(p.micro_batch_tokens, new_tokens))
    per_layer = activation_bytes_per_token_layer(a, compute, 4, rank, longest)
    if p.activation_checkpointing:
        activations = tokens * (a.layers * a.hidden * compute + per_layer)
    else:
        activations = tokens * a.layers * per_layer
    head_chunk = min(completion, head_chunk_rows(a.vocab)) * a.vocab  # logits of one HeadTokenLogprobs chunk
    if a.fused_head:  # one chunk of rows at a time (abspo.rl.logprobs.HeadTokenLogprobs): its logits in the model
        # dtype, then float32 logits, softmax and gradient
        logits = head_chunk * (compute + 4 * 3)
    else:  # the model-dtype logits kept for backward and their gradient, plus one float32 chunk of rows
        # (abspo.rl.logprobs.TokenLogprobs: log-softmax, softmax, gradient)
        logits = completion * a.vocab * compute * 2 + min(completion, ROWS_PER_CHUNK) * a.vocab * 4 * 3
    update = {"activations": activations, "completion logits": logits}
    if p.sharded:
        update["gathered layers (2)"] = 2 * a.layer_params() * b
        # FSDP2's root (embeddings, final norm, an untied LM head) stays gathered from a forward to its backward
        update["gathered root"] = (a.vocab * a.hidden * (1 if a.tied_embeddings else 2) + a.hidden) * b * (1 - 1 / shard)
    phases = {"rollouts": rollouts, "update": update}
    if p.float32_kl and b < 4:
        phases["KL passes (float32)"] = {"float32 LM head": a.vocab * a.hidden * 4,
                                         "float32 logits chunk": head_chunk * 4 * 3}
    if p.judge_params:  # the KV cache of the judge's queries, Mistral-7B/Llama-3-8B shapes (32 layers, 8 x 128 KV)
        phases["judge"] = {"judge KV cache": games * p.judge_tokens * 2 * 32 * 1024 * p.judge_dtype_bytes}
    return MemoryPlan(p, persistent, phases)


# -- from a training config ------------------------------------------------------------------------------------


def architecture(name_or_path: str) -> Architecture:
    """The shapes of a base: the built-in Qwen2.5 table and tiny-qwen2 without any weight file, SmolLM2 from the
    packaged config, anything else from its config.json (local folder or Hugging Face cache)."""
    from abspo.weights.models import architecture_config

    return Architecture.from_hf_config(architecture_config(name_or_path))


def inputs_from_config(paths: list[str], **overrides) -> PlanInputs:
    """PlanInputs of the run ``abspo fit --config paths...`` would start, with ``overrides`` (devices, ...)."""
    from abspo.core.config import AlgorithmConfig, stacked_config_files
    from abspo.game.rules import GameConfig
    from abspo.weights.models import BaseModel

    cfg = stacked_config_files(paths)
    trainer, model, data = cfg.get("trainer") or {}, cfg.get("model") or {}, cfg.get("data") or {}
    base = {**BaseModel().__dict__, **(model.get("base") or {})}
    adapters = ((model.get("bank") or {}).get("adapters")) or {"attacker": {}, "defender": {}}
    game = {**GameConfig().__dict__, **(model.get("game") or {})}
    algorithm = {**AlgorithmConfig().__dict__, **(model.get("algorithm") or {})}
    strategy = trainer.get("strategy") or "auto"
    strategy = strategy.get("class_path", "") if isinstance(strategy, dict) else str(strategy)
    # --devices counts every device of every node; trainer.devices is per node
    devices = overrides.get("devices") or config_devices(trainer.get("devices", 1)) * count(
        trainer.get("num_nodes", 1) or 1, "trainer.num_nodes")
    group = count(algorithm["group_size"], "model.algorithm.group_size")
    judge = model.get("judge") or {}
    judge_name = str(judge.get("class_path", "")).rsplit(".", 1)[-1] if isinstance(judge, dict) else ""
    values = dict(
        arch=architecture(base["name_or_path"]),
        base_dtype=base["dtype"],
        lora_ranks=[count((spec or {}).get("r", 16), f"model.bank.adapters.{name}.r") for name, spec in adapters.items()],
        mode=str(model.get("mode") or "bipolicy"),
        devices=devices,
        sharded="ModelParallel" in strategy or "fsdp" in strategy.lower(),
        games=count(data.get("batch_size", 8), "data.batch_size") * group,
        group_size=group,
        new_tokens_attacker=count(game["max_new_tokens_attacker"], "model.game.max_new_tokens_attacker"),
        new_tokens_defender=count(game["max_new_tokens_defender"], "model.game.max_new_tokens_defender"),
        micro_batch_size=count(algorithm["micro_batch_size"], "model.algorithm.micro_batch_size"),
        micro_batch_tokens=None if algorithm.get("micro_batch_tokens") is None else count(
            algorithm["micro_batch_tokens"], "model.algorithm.micro_batch_tokens"),
        activation_checkpointing=bool(algorithm["activation_checkpointing"]),
        float32_kl=algorithm.get("kl_precision") == "float32",
        head_adapters=[targets_head((spec or {}).get("target_modules", "all-linear")) for spec in adapters.values()],
        judge_params=JUDGE_PARAMS.get(judge_name, 0.0),
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    return PlanInputs(**values)


def targets_head(target_modules) -> bool:
    """Whether PEFT's ``target_modules`` selects the LM head (``lm_head`` in Llama/Qwen2 models). PEFT matches a
    list entry against a module's name or its last dotted parts (the head's name is ``lm_head``), and a string as
    a regex on the whole name; ``all-linear`` leaves the output layer out."""
    if isinstance(target_modules, str):
        return target_modules != "all-linear" and re.fullmatch(target_modules, "lm_head") is not None
    return any(str(t) == "lm_head" for t in target_modules or [])


def config_devices(value) -> int:
    """Processes per node that ``trainer.devices`` asks for: a count, or a list of device ids. ``auto`` and -1 mean
    "what this machine has", which a plan made elsewhere cannot know: a ConfigError asking for ``--devices``."""
    if isinstance(value, (list, tuple)):
        return count(len(value), "trainer.devices")
    if str(value).strip() in ("auto", "-1"):
        raise ConfigError("trainer.devices", f"{value!r} means every device of the machine the run starts on",
                          "pass --devices N (all devices of all nodes) to plan for N")
    return count(value, "trainer.devices")


def count(value, key: str) -> int:
    """``value`` as a whole number >= 1, else a ConfigError naming ``key``."""
    try:
        n = int(value)
        if n != value and not isinstance(value, str):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(key, f"{value!r} is not a whole number", "give a whole number >= 1") from None
    if n < 1:
        raise ConfigError(key, f"must be >= 1, got {n}", "give a whole number >= 1")
    return n


def gib(value: str) -> float:
    """An ``abspo plan`` option in GiB: a number > 0."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of GiB") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return x


NO_CAP = 0


def cap(value: str) -> int:
    """``abspo plan --micro-batch-tokens``: a whole number >= 1, or ``none`` (:data:`NO_CAP`) to lift the config's."""
    return NO_CAP if value.strip().lower() == "none" else whole(value)


def whole(value: str) -> int:
    """An ``abspo plan`` option that counts something: a whole number >= 1."""
    try:
        return count(value, "")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(err.problem) from None


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one abspo line naming the option (not a usage block)."""

    def error(self, message: str):
        option = re.match(r"argument ([-\w/]+): (.*)", message)
        key, problem = option.groups() if option else ("arguments", message)
        raise ConfigError(key.split("/")[0], problem, f"see {self.prog} --help")


def plan_main(argv: list[str]) -> None:
    """``abspo plan``: the memory plan of a training config (see the module docstring)."""
    parser = _OneLineParser(prog="abspo plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, help="training config(s), stacked as for fit")
    parser.add_argument("--devices", type=whole, help="total devices (default: trainer.devices x trainer.num_nodes)")
    parser.add_argument("--sharded", action=argparse.BooleanOptionalAction, default=None,
                        help="FSDP2 sharding (default: from trainer.strategy)")
    parser.add_argument("--device-memory-gib", type=gib, help="memory of one device, e.g. 80 for an H100")
    parser.add_argument("--micro-batch-size", type=whole)
    parser.add_argument("--micro-batch-tokens", type=cap,
                        help="padded tokens per micro-batch at most (none: no cap, whatever the config says)")
    parser.add_argument("--activation-checkpointing", action="store_true", default=None)
    parser.add_argument("--prompt-tokens", type=whole,
                        help="tokens of the longest turn prompt (default 256 + the attacker's max_new_tokens)")
    parser.add_argument("--runtime-gib", type=float, help="framework memory (default 1.0)")
    parser.add_argument("--mode", choices=["bipolicy", "shared_lora", "shared_full"], help="default: model.mode")
    args = parser.parse_args(argv)
    inputs = inputs_from_config(
        args.config, devices=args.devices, sharded=args.sharded, device_memory_gib=args.device_memory_gib,
        micro_batch_size=args.micro_batch_size, micro_batch_tokens=args.micro_batch_tokens,
        activation_checkpointing=args.activation_checkpointing,
        prompt_tokens=args.prompt_tokens, runtime_gib=args.runtime_gib, mode=args.mode)
    if inputs.micro_batch_tokens == NO_CAP:
        inputs = replace(inputs, micro_batch_tokens=None)
    plan = plan_memory(inputs)
    a = plan.inputs.arch
    print(f"{' + '.join(args.config)}: {a.base_params() / 1e9:.2f}B base parameters, "
          f"{sum(a.lora_params(r) for r in plan.inputs.lora_ranks) / 1e6:.1f}M LoRA parameters")
    print(plan.table())
