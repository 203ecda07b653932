"""Training curves from a run's TensorBoard scalars: reading, block means, and PNG plots of one or more runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from abspo.core import run_folder
from abspo.core.errors import ConfigError

Scalars = dict[str, list[tuple[int, float]]]


def read_scalars(run_dir: str | Path) -> Scalars:
    """Every scalar tag of ``<run_dir>/tb`` as (batch index, value) points."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(run_dir) / run_folder.TENSORBOARD
    if not folder.is_dir():
        raise ConfigError("run_dir", f"{run_dir} has no tb/ folder of TensorBoard curves",
                          "point at a run folder, <run.output_root>/<run.name> (e.g. checkpoints/smollm2-cpu)")
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def block_means(points: Sequence[tuple[int, float]], block: int) -> list[tuple[int, float, int]]:
    """(first batch of the block, mean, count) for each block of ``block`` batches that has values."""
    blocks: dict[int, list[float]] = {}
    for step, value in points:
        blocks.setdefault(step // block, []).append(value)
    return [(b * block, sum(v) / len(v), len(v)) for b, v in sorted(blocks.items())]


def plot_runs(runs: Mapping[str, Scalars], tags: Sequence[str], block: int, path: str | Path, title: str) -> Path:
    """One panel per tag, one colour per run: per-batch values faint, block means bold. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tags), figsize=(4 * len(tags), 3.2), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, tag in zip(axes[0], tags):
        for i, (label, scalars) in enumerate(runs.items()):
            points = scalars.get(tag, [])
            if not points:
                continue
            colour = colours[i % len(colours)]
            ax.plot([s for s, _ in points], [v for _, v in points], alpha=0.25, lw=1, color=colour)
            means = block_means(points, block)
            ax.plot([s + block / 2 for s, _, _ in means], [m for _, m, _ in means], lw=2.5, marker="o",
                    color=colour, label=label if len(runs) > 1 else None)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("batch")
        ax.grid(alpha=0.3)
        if len(runs) > 1 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
