"""Cross-play tournament: every attacker against every defender; writes the attack-success matrix.

A thin command line over :func:`abspo.evaluation.crossplay.run_crossplay` (protocol and outputs documented
there and in ``docs/safety-eval.md``). Players are ``vanilla`` (attackers only: the seed unchanged),
``base`` (no adapter) or PEFT adapter folders, optionally named ``label=path``. Options use abspo's config
syntax (jsonargparse); ``--config file.yaml`` holds any of them; ``--help`` lists them all.

    .venv/bin/python tools/crossplay.py --out reports/xplay \\
        --attackers '[vanilla, base, run1=checkpoints/run1/adapters/attacker]' \\
        --defenders '[base, run1=checkpoints/run1/adapters/defender]' --protocol.n_seeds 32
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from abspo.errors import ConfigError
from abspo.evaluation.crossplay import run_crossplay


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("abspo").setLevel(logging.INFO)  # progress lines
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field docs in --help, as `abspo fit` shows
    parser = ArgumentParser(prog="crossplay.py", description=run_crossplay.__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
    parser.add_function_arguments(run_crossplay)
    cfg = parser.parse_args(argv)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    kwargs = instantiate(cfg).as_dict()
    kwargs.pop("config", None)
    try:
        run_crossplay(**kwargs)
    except ConfigError as err:
        print(f"crossplay: error: {err}", file=sys.stderr)
        sys.exit(2)
    out = Path(kwargs["out"])
    print((out / "matrix.md").read_text(encoding="utf-8"))
    heatmap = json.loads((out / "crossplay.json").read_text(encoding="utf-8"))["heatmap"]
    print(f"written to {out}/: matrix.csv, pairs.csv, matrix.md, exchanges.jsonl, crossplay.json, "
          + (heatmap or "no heatmap.png (pip install matplotlib)"))


if __name__ == "__main__":
    main()
