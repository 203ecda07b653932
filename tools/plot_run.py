"""Training curves of a run: block means as a markdown table, and PNG plots.

    python tools/plot_run.py checkpoints/smollm2-learn --block 10 --out docs/img/smollm2-learn

Reads the run's TensorBoard scalars (``<run>/tb``), averages each tag over consecutive blocks of ``--block``
batches (per-batch values are noisy: 8 games each), prints one markdown row per tag, and writes
``<out>-game.png`` (attack success, benign refusal, degenerate and forfeit rates) and ``<out>-roles.png``
(each role's reward and KL to the anchor) with the per-batch values faint and the block means bold.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from abspo.core.errors import one_line_errors
from abspo.evaluation.curves import block_means, plot_runs, read_scalars

GAME = ["game/attack_success_rate", "game/benign_refusal_rate", "game/degenerate_rate", "game/attacker_forfeit_rate",
        "game/attacker_format_failure_rate"]
ROLES = ["attacker/reward", "defender/reward", "attacker/kl", "defender/kl"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--out", type=Path, help="PNG path prefix (no plots without it)")
    args = parser.parse_args()
    scalars = read_scalars(args.run_dir)
    tags = [t for t in GAME + ROLES if t in scalars]
    blocks = block_means(scalars[tags[0]], args.block)
    print("| tag | " + " | ".join(f"{s}-{s + args.block - 1}" for s, _, _ in blocks) + " |")
    print("|---|" + "---:|" * len(blocks))
    for tag in tags:
        means = {s: m for s, m, _ in block_means(scalars[tag], args.block)}
        print(f"| {tag} | " + " | ".join(f"{means[s]:.3f}" if s in means else "–" for s, _, _ in blocks) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        runs = {args.run_dir.name: scalars}
        plot_runs(runs, GAME[:4], args.block, f"{args.out}-game.png", f"{args.run_dir.name}: the game")
        plot_runs(runs, ROLES, args.block, f"{args.out}-roles.png", f"{args.run_dir.name}: rewards and KL")
        print(f"wrote {args.out}-game.png, {args.out}-roles.png")


if __name__ == "__main__":
    with one_line_errors("plot_run.py"):
        main()
