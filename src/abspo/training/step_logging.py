"""Log a batch's metrics at that batch only.

``LightningModule.log(on_step=True)`` keeps each value in the trainer's result collection until the epoch
ends, and every later logging step sends all of them to the loggers again. A self-play run is one endless
epoch, so a metric that is not measured at every batch (a retention check every N steps, one role's update
in the ``phases`` schedule) would be drawn as a flat line of stale repeats between its real points.
:func:`log_batch_metrics` therefore writes to the loggers directly, at the batch's step, and keeps
``self.log`` only for ``trainer.callback_metrics`` (what ``ModelCheckpoint(monitor=...)`` and the progress bar
read, where "the latest value" is the right meaning).
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L


def log_batch_metrics(module: L.LightningModule, metrics: Mapping[str, float], step: int,
                      every_n_steps: int | None = None) -> None:
    """Send ``metrics`` to every logger at ``step`` (the batch index, the x-axis of every abspo scalar).

    ``every_n_steps`` thins regular metrics as ``trainer.log_every_n_steps`` does (None: the trainer's
    setting; pass 1 for rare events such as a retention check, which must never be dropped).
    """
    values = {k: float(v) for k, v in metrics.items()}
    if module._trainer is None:  # a bare module (tests, notebooks): nothing to log to
        return
    module.log_dict(values, on_step=True, on_epoch=False, logger=False, batch_size=1)
    every = module.trainer.log_every_n_steps if every_n_steps is None else every_n_steps
    if (step + 1) % max(1, every):
        return
    for logger in module.loggers:
        logger.log_metrics(values, step=step)
        logger.save()  # as Lightning does after each log: a killed run keeps what was measured


def samples_markdown(exchanges) -> str:
    """A markdown table of games (:class:`~abspo.game.rules.Exchange`) for TensorBoard's text tab."""

    def cell(text: str | None, limit: int = 300) -> str:
        text = (text or "").replace("|", "\\|").replace("\n", " ")
        return text[:limit] + ("…" if len(text) > limit else "")

    rows = ["| seed (label) | attacker prompt | defender response | verdict | rewards |", "|---|---|---|---|---|"]
    for e in exchanges:
        v = e.verdict
        verdict = "—" if v is None else f"req_harm={v.prompt_harmful} refusal={v.refusal} resp_harm={v.response_harmful}"
        label = "harmful" if e.seed_harmful else "benign"
        prompt = e.prompt if e.revised else "(unrevised)"
        rewards = ", ".join(f"{k}={v:+.2f}" for k, v in e.rewards.items())
        rows.append(f"| {cell(e.seed)} ({label}) | {cell(prompt)} | {cell(e.response)} | {verdict} | {rewards} |")
    return "\n".join(rows)
