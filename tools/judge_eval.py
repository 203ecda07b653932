"""Measure a judge against a labelled JSON Lines file.

Each line is an object with ``prompt`` and ``response`` (strings) and any of the labels
``prompt_harmful``, ``refusal``, ``response_harmful`` (true/false/null; null or absent = not labelled).
An optional ``seed_harmful`` (true/false/null) is passed to the judge as the seed hint; ``--hint-from``
uses a label column as the hint instead (as the game does, where the seed's label is known).

For every label the report gives n (rows labelled and judged), accuracy, coverage (the share of labelled
rows the judge gave a verdict for), precision, recall, F1, the confusion counts and how many verdicts were
``None`` (``None`` verdicts are counted separately and excluded from the other figures;
``accuracy_none_wrong`` counts them as errors). A judge that abstains when unsure trades coverage for
accuracy, so the two are read together.

    .venv/bin/python tools/judge_eval.py --data data/judge_eval/dev.jsonl
    .venv/bin/python tools/judge_eval.py --data my.jsonl --judge my_pkg.MyJudge --init-args '{"url": "..."}' --json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LABELS = ("prompt_harmful", "refusal", "response_harmful")


class DataError(ValueError):
    """A malformed labelled file; the message names the file and line."""


@dataclass
class Example:
    prompt: str
    response: str
    labels: dict[str, bool | None]
    seed_harmful: bool | None = None
    line: int = 0
    fields: dict[str, Any] = field(default_factory=dict)


def _bool_or_none(value: Any, what: str, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise DataError(f"{where}: {what!r} must be true, false or null, got {value!r}")


def load_examples(path: str | Path) -> list[Example]:
    """Read a labelled JSONL file; raise :class:`DataError` naming file and line on any malformed row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    out: list[Example] = []
    with path.open(encoding="utf-8") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            for key in ("prompt", "response"):
                if not isinstance(obj.get(key), str):
                    raise DataError(f"{where}: field {key!r} is missing or not a string")
            labels = {k: _bool_or_none(obj.get(k), k, where) for k in LABELS}
            hint = _bool_or_none(obj.get("seed_harmful"), "seed_harmful", where)
            out.append(Example(obj["prompt"], obj["response"], labels, hint, n, obj))
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def build_judge(class_path: str, init_args: dict[str, Any] | None = None):
    """Import ``package.module.Class`` (or a name exported by a package) and instantiate it."""
    module_name, _, attr = class_path.rpartition(".")
    if not module_name:
        raise ValueError(f"--judge must be a dotted class path such as abspo.judges.HeuristicJudge, got {class_path!r}")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(**(init_args or {}))


@dataclass
class LabelReport:
    n: int = 0
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    none: int = 0
    errors: list[int] = field(default_factory=list)

    def add(self, truth: bool, verdict: bool | None, line: int) -> None:
        if verdict is None:
            self.none += 1
            return
        self.n += 1
        if truth and verdict:
            self.tp += 1
        elif truth:
            self.fn += 1
            self.errors.append(line)
        elif verdict:
            self.fp += 1
            self.errors.append(line)
        else:
            self.tn += 1

    def as_dict(self) -> dict[str, Any]:
        def ratio(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        precision = ratio(self.tp, self.tp + self.fp)
        recall = ratio(self.tp, self.tp + self.fn)
        f1 = (
            round(2 * precision * recall / (precision + recall), 4)
            if precision is not None and recall is not None and precision + recall > 0
            else None
        )
        return {
            "n": self.n,
            "accuracy": ratio(self.tp + self.tn, self.n),
            "coverage": ratio(self.n, self.n + self.none),
            "accuracy_none_wrong": ratio(self.tp + self.tn, self.n + self.none),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
            "none": self.none,
            "error_lines": self.errors,
        }


def evaluate(judge, examples: Sequence[Example], hint_from: str | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Run ``judge.score`` over the examples in batches and compare with their labels."""
    reports = {k: LabelReport() for k in LABELS}
    started = time.perf_counter()
    for i in range(0, len(examples), batch_size):
        batch = examples[i : i + batch_size]
        hints = [e.labels[hint_from] if hint_from else e.seed_harmful for e in batch]
        verdicts = judge.score([e.prompt for e in batch], [e.response for e in batch], hints)
        for example, verdict in zip(batch, verdicts):
            for label in LABELS:
                truth = example.labels[label]
                if truth is not None:
                    reports[label].add(truth, getattr(verdict, label), example.line)
    return {
        "examples": len(examples),
        "seconds": round(time.perf_counter() - started, 2),
        "labels": {k: r.as_dict() for k, r in reports.items() if r.n or r.none},
    }


def format_report(result: dict[str, Any], title: str) -> str:
    cols = ("n", "accuracy", "coverage", "precision", "recall", "f1", "tp", "fp", "tn", "fn", "none")
    lines = [title, f"{'label':18s}" + "".join(f"{c:>10s}" for c in cols)]
    for label, rep in result["labels"].items():
        cells = "".join(f"{'-' if rep[c] is None else rep[c]:>10}" for c in cols)
        lines.append(f"{label:18s}{cells}")
    lines.append(f"{result['examples']} examples in {result['seconds']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Measure a judge on labelled (prompt, response) JSONL.")
    ap.add_argument("--data", required=True, type=Path, help="labelled JSONL file")
    ap.add_argument("--judge", default="abspo.judges.HeuristicJudge", help="class path of the judge")
    ap.add_argument("--init-args", default="{}", help="JSON object of keyword arguments for the judge")
    ap.add_argument("--hint-from", choices=LABELS, default=None, help="pass this label column as seed_harmful")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--show-errors", action="store_true", help="print the line numbers of wrong verdicts")
    ap.add_argument(
        "--group-by",
        metavar="FIELD",
        help="also report per value of this field (text before the first ':', e.g. --group-by source)",
    )
    args = ap.parse_args(argv)
    try:
        init_args = json.loads(args.init_args)
        if not isinstance(init_args, dict):
            raise ValueError
    except ValueError:
        print(f"error: --init-args must be a JSON object, got {args.init_args!r}", file=sys.stderr)
        return 2
    try:
        examples = load_examples(args.data)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    judge = build_judge(args.judge, init_args)
    result = evaluate(judge, examples, args.hint_from, args.batch_size)
    result.update({"data": str(args.data), "judge": args.judge, "init_args": init_args, "hint_from": args.hint_from})
    if args.group_by:
        groups: dict[str, list[Example]] = {}
        for example in examples:
            groups.setdefault(str(example.fields.get(args.group_by)).split(":")[0], []).append(example)
        result["groups"] = {g: evaluate(judge, rows, args.hint_from, args.batch_size) for g, rows in sorted(groups.items())}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    hint = f" (hint: {args.hint_from})" if args.hint_from else ""
    print(format_report(result, f"{args.judge} on {args.data}{hint}"))
    for group, sub in result.get("groups", {}).items():
        print()
        print(format_report(sub, f"  {args.group_by} = {group}"))
    if args.show_errors:
        for label, rep in result["labels"].items():
            print(f"{label} wrong at lines: {rep['error_lines']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
