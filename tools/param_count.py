"""Trainable vs frozen parameters, counted on the meta device (no weights, no download).

    python tools/param_count.py --json                  # the paper's table: Qwen2.5-3B/7B/14B x ranks x targets
    python tools/param_count.py --markdown               # the same as a markdown table
    python tools/param_count.py configs/qwen2.5-7b.yaml  # one config's adapters, as it would train

``--json`` prints a JSON list of rows with keys ``model``, ``rank``, ``targets`` (all-linear | attention),
``total_params`` (what full fine-tuning trains), ``lora_params_per_adapter`` (one role), ``lora_params_both_roles``,
``ratio`` and ``ratio_both_roles`` (full fine-tuning / LoRA): see :mod:`abspo.weights.accounting`. ``--models`` and
``--ranks`` narrow it.
"""

from __future__ import annotations

import argparse
import json

from abspo.weights.accounting import RANKS, lora_rows, markdown_table
from abspo.core.errors import one_line_errors
from abspo.weights.models import QWEN25_ARCHITECTURES


def count(config: str) -> dict[str, int]:
    from abspo.cli import cli_main
    from abspo.core.parse_errors import check_config_files

    check_config_files(["--config", config])
    cli = cli_main(["--config", config, "--model.meta_device", "true", "--trainer.accelerator", "cpu"], run=False)
    return cli.model.trainable_parameter_count()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", help="training configs to count as they would train")
    parser.add_argument("--json", action="store_true", help="print the paper's table as a JSON list of rows")
    parser.add_argument("--markdown", action="store_true", help="print the paper's table as markdown")
    parser.add_argument("--models", nargs="+", default=list(QWEN25_ARCHITECTURES), choices=list(QWEN25_ARCHITECTURES))
    parser.add_argument("--ranks", nargs="+", type=int, default=list(RANKS))
    args = parser.parse_args(argv)
    if args.json or args.markdown:
        rows = lora_rows(args.models, args.ranks)
        print(json.dumps(rows, indent=2) if args.json else markdown_table(rows))
    for config in args.configs or ([] if args.json or args.markdown else ["configs/qwen2.5-3b.yaml",
                                                                            "configs/qwen2.5-7b.yaml"]):
        counts = count(config)
        base = counts.pop("base")
        print(f"{config}: base {base / 1e9:.3f} B frozen")
        for adapter, n in counts.items():
            print(f"  adapter {adapter}: {n / 1e6:.1f} M trainable  (base / adapter = {base / n:.0f}x)")


if __name__ == "__main__":
    with one_line_errors("param_count.py"):
        main()
