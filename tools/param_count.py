"""Trainable vs frozen parameters of a config, counted on the meta device (no weights, no download).

    python tools/param_count.py configs/qwen2.5-3b.yaml configs/qwen2.5-7b.yaml

Prints, per config, each adapter's parameter count, the frozen base's, and the ratio base / adapter: the
"fewer trainable parameters than full fine-tuning" factor for one role.
"""

from __future__ import annotations

import sys

from abspo.cli import cli_main


def count(config: str) -> dict[str, int]:
    cli = cli_main(["--config", config, "--model.meta_device", "true", "--trainer.accelerator", "cpu"], run=False)
    return cli.model.trainable_parameter_count()


def main(configs: list[str]) -> None:
    for config in configs:
        counts = count(config)
        base = counts.pop("base")
        print(f"{config}: base {base / 1e9:.3f} B frozen")
        for adapter, n in counts.items():
            print(f"  adapter {adapter}: {n / 1e6:.1f} M trainable  (base / adapter = {base / n:.0f}x)")


if __name__ == "__main__":
    main(sys.argv[1:] or ["configs/qwen2.5-3b.yaml", "configs/qwen2.5-7b.yaml"])
