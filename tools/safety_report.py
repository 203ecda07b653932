"""Safety report of one defender: HarmBench ASR, jailbreak-template ASR, over-refusal, benign compliance.

A thin command line over :func:`abspo.evaluation.safety.run_safety_report` (the metrics and the protocol are
documented there and in ``docs/safety-eval.md``), until ``abspo test`` runs it. Options use abspo's config
syntax (jsonargparse): nested keys (``--base.name_or_path``, ``--protocol.limit``), ``--judge <class path>``
with ``--judge.init_args.<arg>``, and ``--config file.yaml`` holding any of them; ``--help`` lists them all.

    .venv/bin/python tools/safety_report.py --out reports/base --protocol.limit 30
    .venv/bin/python tools/safety_report.py --out reports/run1 --defender checkpoints/run1/adapters/defender \\
        --judge abspo.judges.WildGuardJudge --protocol.limit null
"""

from __future__ import annotations

import logging
import sys

from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from abspo.errors import ConfigError
from abspo.evaluation.safety import render_markdown, run_safety_report


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("abspo").setLevel(logging.INFO)  # progress lines
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field docs in --help, as `abspo fit` shows
    parser = ArgumentParser(prog="safety_report.py", description=run_safety_report.__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
    parser.add_function_arguments(run_safety_report)
    cfg = parser.parse_args(argv)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    kwargs = instantiate(cfg).as_dict()
    kwargs.pop("config", None)
    try:
        report = run_safety_report(**kwargs)
    except ConfigError as err:
        print(f"safety_report: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(render_markdown(report))
    print(f"written to {kwargs['out']}/report.json, report.md, exchanges.jsonl")


if __name__ == "__main__":
    main()
