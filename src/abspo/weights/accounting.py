"""Trainable-parameter accounting in the paper's framing: one LoRA adapter per role against full fine-tuning.

ABS's efficiency claim is a ratio: a full fine-tune of the shared-policy baseline trains every weight of the
base (``total_params``); ABS trains one LoRA adapter per role (``lora_params_per_adapter``, twice that for both
roles). :func:`lora_rows` counts both on the meta device (no memory, no download) for the Qwen2.5 sizes, ranks
and target sets of the paper, by attaching the adapters with PEFT and reading PEFT's own trainable count; the
tests check every figure against a closed-form count from the architecture's shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

from peft import LoraConfig, get_peft_model

from abspo.weights.models import QWEN25_ARCHITECTURES, meta_model

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
TARGETS: dict[str, str | list[str]] = {"all-linear": "all-linear", "attention": ATTENTION}
"""Target sets: every linear layer but the output head (the paper's), or the attention projections only."""
RANKS = (8, 16, 32, 64)


def lora_rows(models: Sequence[str] = tuple(QWEN25_ARCHITECTURES), ranks: Sequence[int] = RANKS,
              targets: Sequence[str] = tuple(TARGETS)) -> list[dict]:
    """One row per (model, target set, rank): ``model``, ``rank``, ``targets``, ``total_params`` (the base: what
    full fine-tuning trains), ``lora_params_per_adapter`` (one role), ``lora_params_both_roles`` (ABS's two
    adapters), ``ratio`` (total / one adapter) and ``ratio_both_roles`` (total / both adapters)."""
    rows = []
    for name in models:
        base = meta_model(name)
        total = sum(p.numel() for p in base.parameters())
        names = {}
        model = None
        for target in targets:
            for rank in ranks:
                adapter = f"{target.replace('-', '_')}_r{rank}"
                config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS[target], task_type="CAUSAL_LM")
                if model is None:
                    model = get_peft_model(base, config, adapter_name=adapter)
                else:
                    model.add_adapter(adapter, config)
                names[target, rank] = adapter
        for (target, rank), adapter in names.items():
            model.set_adapter(adapter)  # PEFT's own count: only the active adapter is trainable
            per_adapter, _ = model.get_nb_trainable_parameters()
            rows.append({"model": name, "rank": rank, "targets": target, "total_params": total,
                         "lora_params_per_adapter": per_adapter, "lora_params_both_roles": 2 * per_adapter,
                         "ratio": total / per_adapter, "ratio_both_roles": total / (2 * per_adapter)})
    return rows


def markdown_table(rows: Sequence[dict]) -> str:
    lines = ["| model | targets | rank | full fine-tuning | LoRA per role | both roles | ratio (one role) | ratio (both) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['targets']} | {r['rank']} | {r['total_params'] / 1e9:.3f} B "
                     f"| {r['lora_params_per_adapter'] / 1e6:.1f} M | {r['lora_params_both_roles'] / 1e6:.1f} M "
                     f"| {r['ratio']:.0f}x | {r['ratio_both_roles']:.0f}x |")
    return "\n".join(lines)
