"""A readable HTML page of a batch's games, every N batches.

Rewards and rates say *that* the game moved; only the games say *how*: which rewrites got through, whether the
defender refuses everything, what the attacker reasons before it writes. TensorBoard's text tab (the module's
``samples_every_n_steps`` table) truncates and flattens them; this page shows whole games, one card each,
with the attacker's hidden ``<think>`` reasoning collapsed in ``<details>``.

Pages go to ``<trainer.default_root_dir>/samples/batch-<batch index>.html`` (the batch index is the x-axis of
every abspo scalar in TensorBoard). They are self-contained (inline
CSS, no scripts, nothing fetched), start with a content warning (the games contain harmful requests and
possibly harmful answers), escape every piece of model and seed text (a seed or an output containing
``<script>`` is shown, never run; see :mod:`abspo.evaluation.pages`), and are written atomically
(:func:`abspo.core.atomic.atomic_write`), so a reader never sees half a page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import lightning as L

from abspo.core import run_folder
from abspo.core.atomic import atomic_write
from abspo.core.errors import ConfigError
from abspo.evaluation.pages import attacker_block, defender_block, html_page, pre, text, verdict_table
from abspo.evaluation.pages import CONTENT_WARNING, split_reasoning

__all__ = ["CONTENT_WARNING", "GameSamplesPage", "render_samples_page", "split_reasoning"]
from abspo.game.rules import Exchange


def _verdict(e: Exchange) -> str:
    return verdict_table(None if e.verdict is None else asdict(e.verdict))


def _game(i: int, e: Exchange) -> str:
    label = "harmful" if e.seed_harmful else "benign"
    parts = [f'<section class="game {label}"><h2>Game {i} <span class="label">— {label} seed, group {e.group}, '
             f'{"revised by the attacker" if e.revised else "unrevised (sent to the defender as is)"}</span></h2>',
             "<h3>Seed</h3>", pre(e.seed)]
    if e.revised:
        parts += attacker_block(e.attacker_output, e.attacker_well_formed)
    parts += ["<h3>Prompt the defender saw</h3>", pre(e.prompt)]
    parts += defender_block(e.defender_output, e.response)
    parts += ["<h3>Verdict</h3>", _verdict(e)]
    rewards = ", ".join(f"{text(role)} {value:+.3f}" for role, value in e.rewards.items()) or "none (unlabelled)"
    parts += [f"<p><strong>Rewards:</strong> {rewards}</p></section>"]
    return "\n".join(parts)


def render_samples_page(exchanges: Sequence[Exchange], step: int, batch_index: int | None = None,
                        title: str = "abspo games") -> str:
    """A self-contained HTML page of ``exchanges`` (every text escaped), with a content warning on top."""
    where = f"optimizer step {step}" + (f", batch {batch_index}" if batch_index is not None else "")
    return html_page(f"{title} — {where}", f"{len(exchanges)} games.", (_game(i, e) for i, e in enumerate(exchanges)))


class GameSamplesPage(L.Callback):
    def __init__(self, every_n_batches: int = 10, dirpath: str | None = None, max_games: int | None = None):
        """
        Args:
            every_n_batches: Write a page after every N-th batch of games (batch index 0, N, 2N, ...).
            dirpath: Output folder; default ``<trainer.default_root_dir>/samples``.
            max_games: Games per page (default: the whole batch).
        """
        if every_n_batches < 1:
            raise ConfigError("trainer.callbacks[GameSamplesPage].init_args.every_n_batches",
                              f"must be >= 1, got {every_n_batches}", "use e.g. 10")
        self.every_n_batches, self.dirpath, self.max_games = every_n_batches, dirpath, max_games
        self.written: list[Path] = []

    def folder(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / run_folder.SAMPLES

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        index = getattr(batch, "index", batch_idx)
        if index % self.every_n_batches or not trainer.is_global_zero:
            return
        exchanges = list(getattr(module, "last_exchanges", []))[: self.max_games]
        page = render_samples_page(exchanges, trainer.global_step, index)
        self.written.append(atomic_write(self.folder(trainer) / f"batch-{index}.html", page))
