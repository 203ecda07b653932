"""Parameter accounting: PEFT's own count on the meta model against a closed-form count from the shapes."""

from __future__ import annotations

import json

import pytest

from abspo.weights.accounting import lora_rows
from abspo.weights.models import QWEN25_ARCHITECTURES

MODEL = "Qwen/Qwen2.5-3B-Instruct"


def closed_form(name: str, rank: int, targets: str) -> tuple[int, int]:
    """(total parameters, LoRA parameters of one adapter), from the published config values alone."""
    a = QWEN25_ARCHITECTURES[name]
    h, i, layers, vocab = a["hidden_size"], a["intermediate_size"], a["num_hidden_layers"], a["vocab_size"]
    kv = a["num_key_value_heads"] * h // a["num_attention_heads"]
    attention = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h)}
    mlp = {"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    linear = attention | mlp
    per_layer = sum(n_in * n_out for n_in, n_out in linear.values()) + (h + 2 * kv) + 2 * h  # q/k/v biases, 2 norms
    total = vocab * h * (1 if a["tie_word_embeddings"] else 2) + layers * per_layer + h
    adapted = linear if targets == "all-linear" else attention
    lora = layers * sum(rank * (n_in + n_out) for n_in, n_out in adapted.values())
    return total, lora


def test_lora_counts_equal_a_closed_form_count():
    rows = lora_rows([MODEL], ranks=[8, 64])
    assert len(rows) == 4
    for row in rows:
        total, lora = closed_form(row["model"], row["rank"], row["targets"])
        assert row["total_params"] == total
        assert row["lora_params_per_adapter"] == lora, row
        assert row["lora_params_both_roles"] == 2 * lora
        assert row["ratio"] == pytest.approx(total / lora)
    by = {(r["targets"], r["rank"]): r for r in rows}
    assert by["all-linear", 64]["lora_params_per_adapter"] == 8 * by["all-linear", 8]["lora_params_per_adapter"]
    assert by["attention", 8]["lora_params_per_adapter"] < by["all-linear", 8]["lora_params_per_adapter"]


def test_param_count_tool_prints_the_documented_json(capsys):
    from tools.param_count import main

    main(["--json", "--models", MODEL, "--ranks", "16"])
    rows = json.loads(capsys.readouterr().out)
    assert {"model", "rank", "targets", "total_params", "lora_params_per_adapter", "ratio"} <= set(rows[0])
    assert [(r["targets"], r["rank"]) for r in rows] == [("all-linear", 16), ("attention", 16)]
    assert rows[0]["total_params"] == closed_form(MODEL, 16, "all-linear")[0]
