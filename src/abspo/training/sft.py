"""``abspo sft``: supervised warm start of one role's LoRA adapter (the defender's) before self-play.

SmolLM2-135M-Instruct answers nearly every harmful request, so in self-play the defender's policy gradient has
no refusal to reinforce: every sampled reply gets the same (losing) reward. A few minutes of supervised
fine-tuning on real refusals of harmful prompts and real answers to harmless-but-edgy ones
(:mod:`abspo.training.warm_start`) gives the defender both behaviours to start from.

Each example is the prompt rendered exactly as the defender's game turn (:func:`abspo.game.rules.defender_prompt`,
tokenised without added special tokens, as :func:`abspo.rl.rollout.generate` does), then the reply's tokens, cut to
``max_reply_tokens``; the end-of-sequence token (the one the game stops at) follows a reply that was not cut. The
loss is the token-mean cross-entropy over reply tokens only: prompt and padding positions are labelled -100.

The result is a standard PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``, written by
:meth:`abspo.weights.bank.AdapterBank.export`) plus ``sft.json`` (settings, data provenance, per-epoch loss), swapped
into place whole (:func:`abspo.core.atomic.atomic_folder`). A second call with the same settings and data finds
``sft.json`` and returns at once: how ``make train`` reuses the warm start.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Sampler

from abspo.core.atomic import atomic_folder, atomic_write, recover_folder
from abspo.weights.bank import ROLES, AdapterBank, BankSpec, LoraSpec, write_role_file
from abspo.core.errors import ConfigError
from abspo.game.rules import GameConfig, defender_prompt
from abspo.weights.models import BaseModel, load_base
from abspo.training.warm_start import Pair, pairs_sha256, warm_start_pairs

log = logging.getLogger(__name__)

IGNORE = -100
"""Label of positions that carry no loss (prompt and padding)."""
RECORD = "sft.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
GRADIENT_CLIP = 1.0
"""Gradient-norm clip of every step (the adapter's gradients only)."""


# -- examples -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    """One tokenised pair: ``input_ids`` = prompt tokens then reply tokens (with EOS unless the reply was cut)."""

    input_ids: list[int]
    prompt_len: int
    """Tokens of the rendered prompt: the first ``prompt_len`` positions carry no loss."""
    truncated: bool
    """The reply was cut (at ``max_reply_tokens``, or already in the source): no EOS follows it."""

    @property
    def reply_tokens(self) -> int:
        return len(self.input_ids) - self.prompt_len


def encode_pair(tokenizer, prompt: str, reply: str, max_reply_tokens: int, system_prompt: str | None = None,
                cut_in_source: bool = False) -> Example:
    """Tokenise one pair as the defender's game turn: the prompt rendered by :func:`abspo.game.rules.defender_prompt`
    (the chat template and ``system_prompt``), then the reply cut to ``max_reply_tokens``, then the EOS token
    unless the reply was cut (here, or already in the source: ``cut_in_source``)."""
    game = GameConfig(defender_system_prompt=system_prompt)
    prompt_ids = tokenizer(defender_prompt(tokenizer, game, prompt), add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    truncated = cut_in_source or len(reply_ids) > max_reply_tokens
    reply_ids = reply_ids[:max_reply_tokens] if truncated else [*reply_ids, tokenizer.eos_token_id]
    return Example(list(prompt_ids) + list(reply_ids), len(prompt_ids), truncated)


def encode_pairs(tokenizer, pairs: list[Pair], max_reply_tokens: int, system_prompt: str | None = None
                 ) -> list[Example]:
    return [encode_pair(tokenizer, p.prompt, p.reply, max_reply_tokens, system_prompt, p.cut) for p in pairs]


def collate(examples: list[Example], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` [B, T]: labels are the input tokens on reply
    positions and -100 on prompt and padding positions (masked by position, never by token id: EOS may equal the
    pad token, as in SmolLM2)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, example in enumerate(examples):
        n = len(example.input_ids)
        row = torch.tensor(example.input_ids, dtype=torch.long)
        ids[i, :n] = row
        attention[i, :n] = 1
        labels[i, example.prompt_len:n] = row[example.prompt_len:]
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def reply_nll(model, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(summed negative log-likelihood of the labelled tokens, their number): position t predicts token t + 1."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    labels = batch["labels"][:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                          ignore_index=IGNORE, reduction="sum")
    return nll, (labels != IGNORE).sum()


class LengthGroupedBatches(Sampler[list[int]]):
    """Batches of similar lengths in a seeded random order: each pass shuffles the examples, sorts each window of
    ``window`` batches by length (less padding) and shuffles the batches. Pass ``k`` of a sampler with seed ``s``
    is the same on every run; each ``iter`` is the next pass (epoch)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window: int = 8):
        self.lengths, self.batch_size, self.seed, self.window = lengths, batch_size, seed, window
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=lambda i: -self.lengths[i])
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        for k in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[k]


# -- training -------------------------------------------------------------------------------------------------
class SFTModule(L.LightningModule):
    """Supervised fine-tuning of ``role``'s adapter in ``bank`` (AdamW on that adapter's parameters only; the base
    stays frozen and in eval mode)."""

    def __init__(self, bank: AdapterBank, role: str = "defender", lr: float = 4e-4):
        super().__init__()
        self.bank, self.role, self.lr = bank, role, lr
        self.epoch_loss: list[float] = []
        """Token-mean loss of each finished epoch."""
        self.steps = 0
        """Optimizer steps taken (set when training ends)."""
        self._sum = 0.0
        self._tokens = 0

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        with self.bank.update_mode(), self.bank.role(self.role) as model:
            nll, tokens = reply_nll(model, batch)
        loss = nll / tokens.clamp(min=1)
        self._sum += float(nll.detach())
        self._tokens += int(tokens)
        self.log("sft/loss", loss.detach(), prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        mean = self._sum / max(1, self._tokens)
        self.epoch_loss.append(mean)
        self.log("sft/epoch_loss", mean)
        log.info("sft epoch %d: mean loss %.4f over %d reply tokens", len(self.epoch_loss), mean, self._tokens)
        self._sum, self._tokens = 0.0, 0

    def on_train_end(self) -> None:
        self.steps = self.trainer.global_step

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.bank.role_parameters(self.role), lr=self.lr, weight_decay=0.0)


def fit_adapter(bank: AdapterBank, role: str, examples: list[Example], pad_id: int, epochs: int, lr: float,
                batch_size: int, seed: int, accelerator: str = "cpu", logger: Any = False,
                root: str | Path | None = None) -> SFTModule:
    """Train ``role``'s adapter of ``bank`` on ``examples`` for ``epochs`` passes; returns the module (its
    ``epoch_loss`` and ``steps`` tell how it went). No checkpoints: the job is minutes long."""
    L.seed_everything(seed, verbose=False)
    module = SFTModule(bank, role, lr)
    sampler = LengthGroupedBatches([len(e.input_ids) for e in examples], batch_size, seed)
    loader = torch.utils.data.DataLoader(examples, batch_sampler=sampler, collate_fn=lambda b: collate(b, pad_id))
    trainer = L.Trainer(accelerator=accelerator, devices=1, max_epochs=epochs, logger=logger,
                        default_root_dir=None if root is None else str(root), enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=sys.stderr.isatty(), log_every_n_steps=1,
                        gradient_clip_val=GRADIENT_CLIP, use_distributed_sampler=False, num_sanity_val_steps=0)
    with warnings.catch_warnings():
        for pattern in (r".*does not have many workers.*", r".*module\(s\) in eval mode.*",
                        r".*smaller than the logging interval.*"):
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(module, train_dataloaders=loader)
    return module


# -- the command ----------------------------------------------------------------------------------------------
def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: value}


def _read_record(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _check_existing(folder: Path, settings: dict, data_sha: str, overwrite: bool) -> dict | None:
    """The record of ``folder`` when it already holds this very warm start (cached); None when it is free or may be
    replaced; a ConfigError when it holds something else and ``overwrite`` is off (or is no warm start at all)."""
    recover_folder(folder)  # a swap killed between its two renames
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return None
    record = _read_record(folder)
    if record is None:
        raise ConfigError("--out", f"{folder} exists and holds no {RECORD}, so abspo sft did not write it",
                          "pick a new folder (abspo sft replaces only folders it wrote)")
    complete = all((folder / name).is_file() for name in ADAPTER_FILES)
    saved_settings, saved_data = record.get("settings", {}), record.get("data", {}).get("pairs_sha256")
    if complete and saved_settings == settings and saved_data == data_sha:
        return record
    if overwrite:
        return None
    theirs, ours = _flatten(saved_settings), _flatten(settings)
    changed = [k for k in ours if theirs.get(k, "<unset>") != ours[k]] + [k for k in theirs if k not in ours]
    fix = "pass --overwrite true to replace it, or pick another --out"
    if changed:
        key = changed[0]
        raise ConfigError(f"--{key}", f"{folder} holds a warm start trained with {key}={theirs.get(key)!r}, this call "
                          f"has {ours.get(key)!r}", fix)
    if saved_data != data_sha:
        raise ConfigError("--out", f"{folder} holds a warm start trained on other data (pairs sha256 {saved_data}, now "
                          f"{data_sha}): the XSTest file or an evaluation set changed", fix)
    raise ConfigError("--out", f"{folder} lacks {' or '.join(ADAPTER_FILES)}", fix)


def _validate(role: str, lora: LoraSpec, epochs: int, lr: float, batch_size: int, max_reply_tokens: int,
              limit: int | None) -> None:
    if role != "defender":
        hint = "" if role in ROLES else f" ({role!r} is no role: roles are {list(ROLES)})"
        raise ConfigError("--role", f"the warm-start data are defender replies; role {role!r} cannot learn from "
                          f"them{hint}", "use --role defender")
    for key, value, least in (("--epochs", epochs, 1), ("--batch_size", batch_size, 1),
                              ("--max_reply_tokens", max_reply_tokens, 1), ("--lora.r", lora.r, 1)):
        if not isinstance(value, int) or value < least:
            raise ConfigError(key, f"must be a whole number >= {least}, got {value!r}",
                              f"give a whole number >= {least}")
    if limit is not None and limit < 1:
        raise ConfigError("--limit", f"must be >= 1 or null, got {limit}",
                          "give a number of pairs >= 1, or null for all")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError("--lr", f"must be a positive number, got {lr!r}", "e.g. --lr 4e-4 for an r=8 LoRA")
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError("--lora.dropout", f"must be in [0, 1), got {lora.dropout}", "use 0 (the default)")


def run_sft(
    out: str,
    base: BaseModel = BaseModel(dtype="float32"),
    role: str = "defender",
    lora: LoraSpec = LoraSpec(r=8, alpha=16),
    epochs: int = 2,
    lr: float = 4e-4,
    batch_size: int = 8,
    max_reply_tokens: int = 96,
    replies_per_prompt: int | None = 1,
    seed: int = 0,
    limit: int | None = None,
    system_prompt: str | None = None,
    accelerator: str = "cpu",
    tensorboard: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Warm-start one role's LoRA adapter by supervised fine-tuning on XSTest's refusals and answers.

    Writes ``out/`` as a PEFT adapter folder (adapter_config.json, adapter_model.safetensors) with sft.json (the
    settings, the data's provenance and sha256, the mean loss of each epoch) and tb/ (TensorBoard), all at once.
    When ``out/sft.json`` already records these settings and data, nothing is trained: it says so and returns.

    Args:
        out: Output folder: the adapter, sft.json and tb/ (replaced whole, never left half-written).
        base: The frozen base; the self-play run must use the same one. Default: smollm2-135m-instruct in float32
            (the CPU dtype; bfloat16 on a GPU).
        role: The role whose adapter is trained: defender (the data are defender replies).
        lora: The adapter's LoRA spec; must equal model.bank.adapters.<adapter> of the self-play run that loads it
            (configs/smollm2-cpu.yaml: r 8, alpha 16).
        epochs: Passes over the pairs.
        lr: AdamW learning rate (constant, no weight decay; gradient norm clipped at 1).
        batch_size: Pairs per optimizer step (right-padded, grouped by length).
        max_reply_tokens: Reply tokens kept per pair; a longer reply is cut and gets no end-of-sequence token.
        replies_per_prompt: Replies kept per XSTest prompt (the shortest; XSTest has up to five, one per model);
            null keeps all of them (949 pairs, about four times the time).
        seed: Seed of the batch order (the LoRA initialisation is fixed by parameter name).
        limit: Train on the first N pairs only (a mixed, fixed order), for smoke runs; null: all.
        system_prompt: The defender's system prompt; must equal model.game.defender_system_prompt of the self-play
            run (null: the chat template's default), so the prompts are the tokens the defender sees there.
        accelerator: Lightning accelerator: cpu, cuda or auto.
        tensorboard: Log the loss of every step to out/tb/.
        overwrite: Replace a warm start in ``out`` trained with other settings or data (off: that is an error).
            With the same settings and data the folder is reused either way.
    """
    _validate(role, lora, epochs, lr, batch_size, max_reply_tokens, limit)
    folder = Path(out)
    settings = {"base": asdict(base), "role": role, "lora": asdict(lora), "epochs": epochs, "lr": lr,
                "batch_size": batch_size, "max_reply_tokens": max_reply_tokens,
                "replies_per_prompt": replies_per_prompt, "seed": seed, "limit": limit, "system_prompt": system_prompt,
                "gradient_clip": GRADIENT_CLIP}
    settings = json.loads(json.dumps(settings))  # as sft.json will hold them (lists, not tuples)
    pairs, provenance = warm_start_pairs(replies_per_prompt)
    if limit is not None:
        pairs = pairs[:limit]
    used_by_style = {s: sum(p.style == s for p in pairs) for s in sorted({p.style for p in pairs})}
    provenance |= {"limit": limit, "used": len(pairs), "used_by_style": used_by_style,
                   "pairs_sha256": pairs_sha256(pairs)}
    cached = _check_existing(folder, settings, provenance["pairs_sha256"], overwrite)
    if cached is not None:
        print(f"abspo sft: cached: {folder} already holds this warm start (same settings and data in {RECORD}); "
              "nothing trained")
        return cached | {"cached": True}

    started = time.monotonic()
    model, tokenizer = load_base(base)
    examples = encode_pairs(tokenizer, pairs, max_reply_tokens, system_prompt)
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(e.input_ids) for e in examples)
    if context and longest > context:
        raise ConfigError("--max_reply_tokens", f"an example of {longest} tokens exceeds the base's context of "
                          f"{context}", "lower --max_reply_tokens")
    bank = AdapterBank(model, BankSpec(adapters={role: lora}, roles={r: role for r in ROLES}))
    log.info("sft: %d pairs (%s), %d epochs of %d steps, base %s", len(pairs), provenance["used_by_style"], epochs,
             math.ceil(len(pairs) / batch_size), base.name_or_path)
    with atomic_folder(folder) as tmp:
        logger = False
        if tensorboard:
            from lightning.pytorch.loggers import TensorBoardLogger

            logger = TensorBoardLogger(save_dir=str(tmp), name="tb", version="")
        module = fit_adapter(bank, role, examples, tokenizer.pad_token_id, epochs, lr, batch_size, seed,
                             accelerator, logger, tmp)
        staged = bank.export(role, tmp / ".adapter")
        for path in staged.iterdir():
            path.rename(tmp / path.name)
        staged.rmdir()
        write_role_file(tmp, role, role)  # export's says shared_lora (one adapter for both roles): not a mode here
        record = {
            "settings": settings,
            "data": provenance,
            "epoch_loss": module.epoch_loss,
            "steps": module.steps,
            "rows": len(examples),
            "reply_tokens": sum(e.reply_tokens for e in examples),
            "truncated_replies": sum(e.truncated for e in examples),
            "seconds": round(time.monotonic() - started, 1),
            "versions": _versions(),
        }
        atomic_write(tmp / RECORD, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return record | {"cached": False}


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "lightning": L.__version__}
