"""benchmarks/bench_rollouts.py's comparison (also run by tools/gpu_check.py): every decoding option on one batch."""

from __future__ import annotations

import torch

from abspo.rl.rollout import DecodingConfig
from benchmarks.bench_rollouts import decoding_figures
from tests.conftest import perturb, tiny_bank


def test_decoding_figures_time_every_option_and_compare_their_samples():
    """Compiled decoding's samples are checked in test_rollout.py; continuous batching is left to the benchmark's
    own runs (its manager costs a CPU 7-17 s a call even on the tiny model)."""
    torch._dynamo.reset()
    bank, tok = tiny_bank()
    perturb(bank.role_parameters("defender"), 3, scale=3.0)
    batches = [["Hi", "A longer prompt, so that the batch is padded", "Tell me about the weather today"],
               ["Another batch", "of other widths: one of its prompts is longer than any of the first batch's"]]
    options = {"dynamic": DecodingConfig(), "static": DecodingConfig(cache="static"),
               "broken": DecodingConfig(cache="static", compile=True, compile_backend="no_such_backend")}
    figures = decoding_figures(bank, tok, batches, new_tokens=5, decodings=options, continuous=False)
    for name in ("dynamic", "static"):
        row = figures[name]
        assert row["same"] == 1.0 and row["tokens"] == 2 * 5 and row["tokens_per_s"] > 0, (name, row)
    assert figures["dynamic"]["ratio"] == 1.0
    assert "no_such_backend" in figures["broken"]["error"], "a failing option is reported, the others still run"
    torch._dynamo.reset()


def test_game_figures_play_whole_games_per_option_and_compare_them(judge, seeds):
    from abspo.game.rules import GameConfig
    from abspo.training.module import SelfPlayModule
    from benchmarks.bench_rollouts import game_figures
    from tests.conftest import TINY

    module = SelfPlayModule(base=TINY, judge=judge, game=GameConfig(max_new_tokens_attacker=6, max_new_tokens_defender=4))
    perturb([p for p in module.bank.adapter_state_dict().values()], 4, scale=3.0)
    options = {"dynamic": DecodingConfig(), "static": DecodingConfig(cache="static")}
    figures = game_figures(module, [seeds.batch(0).seeds[:3], seeds.batch(1).seeds[:5]], options)
    assert figures["static"]["same"] == 1.0 and figures["dynamic"]["ratio"] == 1.0
    assert all(row["median_s"] > 0 for row in figures.values())
    assert module.rollout_cfg.hf is options["static"], "the module plays with each option in turn"
