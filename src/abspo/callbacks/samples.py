"""A readable HTML page of a batch's games, every N batches.

Rewards and rates say *that* the game moved; only the games say *how*: which rewrites got through, whether the
defender refuses everything, what the attacker reasons before it writes. TensorBoard's text tab (the module's
``samples_every_n_steps`` table) truncates and flattens them; this page shows whole games, one card each,
with the attacker's hidden ``<think>`` reasoning collapsed in ``<details>``.

Pages go to ``<trainer.default_root_dir>/samples/step-<global_step>.html``. They are self-contained (inline
CSS, no scripts, nothing fetched), start with a content warning (the games contain harmful requests and
possibly harmful answers), escape every piece of model and seed text (a seed or an output containing
``<script>`` is shown, never run), and are written atomically (temporary sibling + rename), so a reader never
sees half a page.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from abspo.errors import ConfigError
from abspo.game import Exchange

CONTENT_WARNING = ("Content warning: these are red-teaming games. They contain harmful requests and model outputs "
                   "that may be offensive, dangerous or false. Do not act on them.")

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 1rem auto; padding: 0 1rem; color: #222; }
.warning { background: #fff3cd; border: 2px solid #c9a100; padding: .75rem 1rem; font-weight: bold; }
.game { border: 1px solid #ccc; border-radius: 6px; padding: .5rem 1rem; margin: 1rem 0; }
.harmful { border-left: 6px solid #c0392b; } .benign { border-left: 6px solid #2e86c1; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f6; padding: .5rem; margin: .25rem 0; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: .2rem .5rem; text-align: left; }
h2 { font-size: 1.05rem; margin: .4rem 0; } .label { font-weight: normal; color: #555; }
"""


def _text(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _pre(value: str | None) -> str:
    return f"<pre>{_text(value) if value else '<em>(empty)</em>'}</pre>"


def split_reasoning(output: str) -> tuple[str | None, str]:
    """(hidden reasoning inside ``<think>…</think>``, the rest); reasoning is None when there is no think block."""
    if "<think>" not in output:
        return None, output
    before, _, after = output.partition("<think>")
    thought, closed, rest = after.partition("</think>")
    return thought.strip(), (before + rest).strip() if closed else before.strip()


def _verdict(e: Exchange) -> str:
    v = e.verdict
    if v is None:
        return "<em>not judged</em>"
    cells = "".join(f"<tr><th>{name}</th><td>{_text(value)}</td></tr>" for name, value in
                    (("request harmful", v.prompt_harmful), ("refusal", v.refusal), ("response harmful", v.response_harmful)))
    return f"<table>{cells}</table>"


def _game(i: int, e: Exchange) -> str:
    label = "harmful" if e.seed_harmful else "benign"
    parts = [f'<section class="game {label}"><h2>Game {i} <span class="label">— {label} seed, group {e.group}, '
             f'{"revised by the attacker" if e.revised else "unrevised (sent to the defender as is)"}</span></h2>',
             "<h3>Seed</h3>", _pre(e.seed)]
    if e.revised:
        thought, visible = split_reasoning(e.attacker_output or "")
        formed = {True: "well-formed", False: "malformed", None: "format unknown"}[e.attacker_well_formed]
        parts += [f"<h3>Attacker output ({formed})</h3>"]
        if thought is not None:
            parts += ["<details><summary>hidden reasoning (never shown to the defender or the judge)</summary>",
                      _pre(thought), "</details>"]
        parts += [_pre(visible)]
    parts += ["<h3>Prompt the defender saw</h3>", _pre(e.prompt)]
    if e.defender_output and e.defender_output.strip() != e.response.strip():
        parts += ["<details><summary>defender's full output (with its reasoning)</summary>", _pre(e.defender_output),
                  "</details>"]
    parts += ["<h3>Defender answer</h3>", _pre(e.response), "<h3>Verdict</h3>", _verdict(e)]
    rewards = ", ".join(f"{_text(role)} {value:+.3f}" for role, value in e.rewards.items()) or "none (unlabelled)"
    parts += [f"<p><strong>Rewards:</strong> {rewards}</p></section>"]
    return "\n".join(parts)


def render_samples_page(exchanges: Sequence[Exchange], step: int, batch_index: int | None = None,
                        title: str = "abspo games") -> str:
    """A self-contained HTML page of ``exchanges`` (every text escaped), with a content warning on top."""
    where = f"optimizer step {step}" + (f", batch {batch_index}" if batch_index is not None else "")
    games = "\n".join(_game(i, e) for i, e in enumerate(exchanges))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_text(title)} — {_text(where)}</title><style>{_STYLE}</style></head>\n<body>\n"
            f'<p class="warning" role="alert">{_text(CONTENT_WARNING)}</p>\n'
            f"<h1>{_text(title)} — {_text(where)}</h1>\n<p>{len(exchanges)} games.</p>\n{games}\n</body></html>\n")


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling and a rename: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


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
        return Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "samples"

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        index = getattr(batch, "index", batch_idx)
        if index % self.every_n_batches or not trainer.is_global_zero:
            return
        exchanges = list(getattr(module, "last_exchanges", []))[: self.max_games]
        page = render_samples_page(exchanges, trainer.global_step, index)
        self.written.append(write_atomic(self.folder(trainer) / f"step-{trainer.global_step}.html", page))
