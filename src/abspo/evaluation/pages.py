"""Readable HTML pages of exchanges, for people: the training games and every evaluation's exchanges.

Rates say *that* something moved; only the exchanges say *how*: which rewrites got through, whether a
defender refuses everything, what it answered when the judge called it harmful. ``exchanges.jsonl`` holds
them for scripts; these pages are for reading. One card per exchange, every piece of model, seed and
benchmark text escaped (a ``<script>`` in a seed or an output is shown, never run), hidden reasoning folded
into ``<details>``, a content warning on top, inline CSS, no scripts, nothing fetched.

:class:`~abspo.callbacks.samples.GameSamplesPage` renders the training games with these helpers;
:func:`render_records_page` renders the records of a safety report or a cross-play tournament.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

CONTENT_WARNING = ("Content warning: these are red-teaming exchanges. They contain harmful requests and model "
                   "outputs that may be offensive, dangerous or false. Do not act on them.")

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 1rem auto; padding: 0 1rem; color: #222; }
.warning { background: #fff3cd; border: 2px solid #c9a100; padding: .75rem 1rem; font-weight: bold; }
.game { border: 1px solid #ccc; border-radius: 6px; padding: .5rem 1rem; margin: 1rem 0; }
.harmful { border-left: 6px solid #c0392b; } .benign { border-left: 6px solid #2e86c1; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f6; padding: .5rem; margin: .25rem 0; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: .2rem .5rem; text-align: left; }
h2 { font-size: 1.05rem; margin: .4rem 0; } .label { font-weight: normal; color: #555; }
"""

LABELS = (("request harmful", "prompt_harmful"), ("refusal", "refusal"), ("response harmful", "response_harmful"))


def text(value: object) -> str:
    """``value`` as escaped HTML text (None as empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def pre(value: str | None) -> str:
    return f"<pre>{text(value) if value else '<em>(empty)</em>'}</pre>"


def split_reasoning(output: str) -> tuple[str | None, str]:
    """(hidden reasoning inside ``<think>…</think>``, the rest); reasoning is None when there is no think block."""
    if "<think>" not in output:
        return None, output
    before, _, after = output.partition("<think>")
    thought, closed, rest = after.partition("</think>")
    return thought.strip(), (before + rest).strip() if closed else before.strip()


def verdict_table(labels: Mapping[str, Any] | None) -> str:
    """The judge's three labels (``prompt_harmful``, ``refusal``, ``response_harmful``) as a small table."""
    if labels is None:
        return "<em>not judged</em>"
    cells = "".join(f"<tr><th>{name}</th><td>{text(labels.get(key))}</td></tr>" for name, key in LABELS)
    return f"<table>{cells}</table>"


def attacker_block(output: str | None, well_formed: bool | None) -> list[str]:
    """An attacker's raw output, its hidden reasoning folded away."""
    thought, visible = split_reasoning(output or "")
    formed = {True: "well-formed", False: "malformed", None: "format unknown"}[well_formed]
    parts = [f"<h3>Attacker output ({formed})</h3>"]
    if thought is not None:
        parts += ["<details><summary>hidden reasoning (never shown to the defender or the judge)</summary>",
                  pre(thought), "</details>"]
    return parts + [pre(visible)]


def defender_block(output: str | None, response: str) -> list[str]:
    """The defender's visible answer, with its full output (reasoning included) folded away when it differs."""
    parts = []
    if output and output.strip() != response.strip():
        parts += ["<details><summary>defender's full output (with its reasoning)</summary>", pre(output), "</details>"]
    return parts + ["<h3>Defender answer</h3>", pre(response)]


def html_page(title: str, intro: str, cards: Iterable[str]) -> str:
    """A self-contained page: content warning, ``title``, ``intro`` (plain text) and the cards."""
    body = "\n".join(cards)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{text(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            f'<p class="warning" role="alert">{text(CONTENT_WARNING)}</p>\n'
            f"<h1>{text(title)}</h1>\n<p>{text(intro)}</p>\n{body}\n</body></html>\n")


def record_card(i: int, record: Mapping[str, Any]) -> str:
    """One evaluation record: a safety-report item (``benchmark``, ``request``…) or a cross-play exchange
    (``attacker``, ``defender``, ``seed``…), as in their ``exchanges.jsonl``."""
    if "benchmark" in record:
        harmful = record.get("harmful")
        heading = f"{record['benchmark']} #{i}" + (f", template {record['template']}" if record.get("template") else "")
        request_title, request = "Request", record.get("request")
    else:
        harmful = True
        heading = f"{record.get('attacker')} vs {record.get('defender')}, seed {record.get('seed_index')}"
        request_title, request = "Seed", record.get("seed")
    label = "harmful" if harmful else "benign"
    parts = [f'<section class="game {label}"><h2>{text(heading)} <span class="label">— {label}</span></h2>',
             f"<h3>{request_title}</h3>", pre(request)]
    if record.get("attacker_output") is not None:
        parts += attacker_block(record["attacker_output"], record.get("attacker_well_formed"))
    if record.get("prompt") != request:
        parts += ["<h3>Prompt the defender saw</h3>", pre(record.get("prompt"))]
    parts += defender_block(record.get("defender_output"), record.get("response") or "")
    parts += ["<h3>Verdict</h3>", verdict_table(record), "</section>"]
    return "\n".join(parts)


def render_records_page(records: Sequence[Mapping[str, Any]], title: str) -> str:
    """A page of every record of a safety report or cross-play tournament (``exchanges.html``)."""
    return html_page(title, f"{len(records)} exchanges, in the order of exchanges.jsonl.",
                     (record_card(i, r) for i, r in enumerate(records)))
