"""SafetyTable: end a training run with the before/after safety table (:mod:`abspo.evaluation.before_after`).

At the end of ``fit`` it measures, on the same held-out prompts and in the same process:

* ``base``: the frozen base, adapters off;
* ``warm start``: where the defender started, when it started from an adapter (``init_from``): the bank's frozen
  copy of it (under ``model.anchor: base`` the copy is added for the measurement);
* the trained defender (``<mode> defender``).

It prints the table and writes ``<run dir>/safety_table/`` (``table.md``, ``table.json``, every exchange in
``exchanges.jsonl``). No model is loaded again: each column is a routing of the bank already in memory. A run
that ends at a step whose table is already written (a finished run started again) prints that table instead of
measuring again.

Under several processes every process measures (greedy decoding: the same figures) and the first one writes;
under FSDP2, where generation is a collective the evaluation players do not run, the table is skipped with a
warning, and ``abspo test`` measures the exported adapters instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from abspo.core import run_folder
from abspo.weights.bank import AdapterBank
from abspo.evaluation.before_after import Subject, TableProtocol, measure, write_table

KEY = "trainer.callbacks[SafetyTable].init_args"


class SafetyTable(L.Callback):
    def __init__(self, protocol: TableProtocol | None = None, print_table: bool = True):
        """
        Args:
            protocol: Prompts per benchmark (limit, benign_limit), answer length, batch size, sampling seed and the
                retention task. Default: 50 HarmBench and 50 over-refusal prompts, 30 benign, 96 new tokens.
            print_table: Print the table when it is done (it is written to the run folder either way).
        """
        self.protocol = protocol or TableProtocol()
        self.protocol.validate(f"{KEY}.protocol")
        self.print_table = print_table
        self.text: str | None = None
        """The table of the latest measurement (markdown)."""

    def subjects(self, module) -> list[Subject]:
        bank = module.bank
        out = []
        if isinstance(bank, AdapterBank):
            out.append(Subject("base", lambda: bank.use(None)))
            adapter = bank.adapter_for("defender")
            if adapter in bank.initial_sources:
                start = bank.frozen_start(adapter)
                out.append(Subject("warm start", lambda: bank.use(start)))
        else:  # a full policy keeps one frozen model: the base, or (anchor: initial) its merged start
            label = "warm start" if bank.initial_sources and module.anchor == "initial" else "base"
            out.append(Subject(label, lambda: bank.anchor("defender")))
        out.append(Subject(f"{module.mode} defender", lambda: bank.role("defender")))
        return out

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if module.layout.sharded:
            rank_zero_warn("SafetyTable: skipped under FSDP2 (evaluation generates on one process); measure the "
                           "exported adapters with `abspo test` instead")
            return
        folder = Path(trainer.default_root_dir) / run_folder.SAFETY_TABLE
        step = trainer.global_step
        done = folder / "table.json"
        saved = json.loads(done.read_text(encoding="utf-8")) if done.is_file() else {}
        # Reused only when written at this step with this protocol: a larger `table.limit` measures again.
        if saved.get("step") == step and saved.get("protocol") == json.loads(json.dumps(asdict(self.protocol))):
            self.text = (folder / "table.md").read_text(encoding="utf-8")
        else:
            columns, records = {}, []
            for subject in self.subjects(module):
                columns[subject.label], recs = measure(subject, module.tokenizer, module.judge, module.game,
                                                       self.protocol)
                records += recs
            judge = f"{type(module.judge).__module__}.{type(module.judge).__qualname__}"
            meta = {"step": step, "mode": module.mode, "anchor": module.anchor, "judge": judge,
                    "protocol": asdict(self.protocol),
                    "initial": {a: s["init_from"] for a, s in module.bank.initial_sources.items()}}
            if trainer.is_global_zero:
                self.text = write_table(folder, columns, records, meta)
            trainer.strategy.barrier()
            self.text = (folder / "table.md").read_text(encoding="utf-8")
        if self.print_table and trainer.is_global_zero:
            print("\n" + self.text, flush=True)
