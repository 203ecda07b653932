"""The code in the extension-point docs runs as written."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger

from abspo.game.seeds import SeedDataModule
from abspo.game.rules import GameConfig
from abspo.judges import HeuristicJudge
from abspo.training.module import SelfPlayModule
from tests.conftest import TINY

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(encoding="utf-8"), flags=re.S)


def test_the_callback_example_logs_per_source_rates_at_its_batches(tmp_path):
    (example,) = python_blocks("callbacks.md")
    namespace: dict = {}
    exec(compile(example, "docs/callbacks.md", "exec"), namespace)
    callback = namespace["AttackSuccessByCategory"](every_n_steps=2)
    module = SelfPlayModule(base=TINY, judge=HeuristicJudge(),
                            game=GameConfig(max_new_tokens_attacker=8, max_new_tokens_defender=8))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=6, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, logger=CSVLogger(tmp_path, name="csv", version=""),
                        log_every_n_steps=1, callbacks=[callback])
    trainer.fit(module, datamodule=SeedDataModule(batch_size=4))
    with open(tmp_path / "csv" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in rows[0] if c.startswith("asr_by_source/")]
    assert columns, "the example logged no per-source rate"
    steps = sorted({int(r["step"]) for r in rows if any(r[c] for c in columns)})
    assert steps == [0, 2], "logged at batches 0 and 2 (every 2nd of 3 batches), and only there"
