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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

GAME = ["game/attack_success_rate", "game/benign_refusal_rate", "game/degenerate_rate", "game/attacker_forfeit_rate",
        "game/attacker_format_failure_rate"]
ROLES = ["attacker/reward", "defender/reward", "attacker/kl", "defender/kl"]


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def block_means(points: list[tuple[int, float]], block: int) -> list[tuple[int, float, int]]:
    """(first batch of the block, mean, count) for each block of ``block`` batches that has values."""
    blocks: dict[int, list[float]] = {}
    for step, value in points:
        blocks.setdefault(step // block, []).append(value)
    return [(b * block, sum(v) / len(v), len(v)) for b, v in sorted(blocks.items())]


def plot(scalars, tags, block: int, path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, len(tags), figsize=(4 * len(tags), 3.2), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        points = scalars.get(tag, [])
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], alpha=0.25, lw=1)
            means = block_means(points, block)
            ax.plot([s + block / 2 for s, _, _ in means], [m for _, m, _ in means], lw=2.5, marker="o")
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("batch")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        plot(scalars, GAME[:4], args.block, Path(f"{args.out}-game.png"), f"{args.run_dir.name}: the game")
        plot(scalars, ROLES, args.block, Path(f"{args.out}-roles.png"), f"{args.run_dir.name}: rewards and KL")
        print(f"wrote {args.out}-game.png, {args.out}-roles.png")


if __name__ == "__main__":
    main()
