"""Playing a batch of red-team games: the plan, each role's turns, the judge's verdicts and the rewards.

:mod:`abspo.game.rules` says what one game is (templates, turn parsing, :class:`~abspo.game.rules.Exchange`); this module
plays a batch of them:

1. :func:`plan_games` decides the batch's games before any is played: ``group_size`` per seed, each seed
   revised by the attacker or sent unrevised. The whole batch is planned on every process, so a data-parallel
   run plays exactly the games of one process.
2. :class:`TurnSampler` samples a role's turns with the role's adapter active, each turn with the key of its
   game (:func:`sampling_key`): a game is the same on any process, in any batch layout, after any resume.
3. :func:`play_games` plays the attacker's turns, then the defender's, then :func:`judge_games` asks the
   judge and pays the rewards.
4. :func:`game_metrics` says how the game is going.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from collections.abc import Callable

from abspo.game.seeds import Seed
from abspo.rl.degenerate import degenerate_reply
from abspo.core.errors import ConfigError
from abspo.game.rules import (Exchange, GameConfig, attacker_forfeits, attacker_prompt, defender_prompt,
                        read_attacker_turn, read_defender_turn)
from abspo.game.rewards import score_exchanges
from abspo.rl.rollout import Generation, generate
from abspo.weights.sharding import gathered
from abspo.core.timing import PhaseClock

log = logging.getLogger(__name__)

SampleTurns = Callable[[str, list[str], list[int]], Generation]
"""(role, prompts, game numbers) -> the role's sampled turns: what :func:`play_games` plays with."""


# -- the plan ---------------------------------------------------------------------------------------
def unrevised_seeds(seeds: list[Seed], fraction: float) -> set[int]:
    """Indices of the seeds that skip the attacker: the same share of the harmful and of the benign seeds."""
    chosen: set[int] = set()
    for label in (True, False):
        indices = [i for i, s in enumerate(seeds) if s.harmful == label]
        chosen.update(indices[: round(len(indices) * fraction)])
    return chosen


def plan_games(seeds: list[Seed], group_size: int, unrevised_fraction: float) -> list[Exchange]:
    """The batch's games before they are played: ``group_size`` per seed (GRPO), each seed revised or not
    (``unrevised_fraction``), numbered in batch order."""
    unrevised = unrevised_seeds(seeds, unrevised_fraction)
    # A seed's GRPO group shares one fate (revised or not) so that its games are comparable.
    exchanges = [Exchange(seed=s.prompt, seed_harmful=s.harmful, revised=i not in unrevised, group=i)
                 for i, s in enumerate(seeds) for _ in range(group_size)]
    for n, e in enumerate(exchanges):
        e.game = n
    return exchanges


def sampling_key(batch_index: int, game: int, role: str) -> int:
    """The sampling key of a role's turn in game ``game`` of batch ``batch_index`` (and the run's seed): what
    makes a game the same on any process, in any batch layout, and after a resume."""
    base = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything
    return zlib.crc32(f"{base}/{batch_index}/{game}/{role}".encode())


# -- playing ----------------------------------------------------------------------------------------
def play_games(exchanges: list[Exchange], sample_turns: SampleTurns, tokenizer, game: GameConfig) -> None:
    """Fill the planned ``exchanges`` with the attacker's turns (revised games) and the defender's (every game
    the attacker did not forfeit); judging is :func:`judge_games`."""
    revised = [e for e in exchanges if e.revised]
    gen = sample_turns("attacker", [attacker_prompt(tokenizer, game, e.seed, e.seed_harmful) for e in revised],
                       [e.game for e in revised])
    for i, (e, p_ids, c_ids, text) in enumerate(zip(revised, gen.prompt_ids, gen.completion_ids, gen.texts)):
        e.attacker_output, parsed = read_attacker_turn(game, text)
        e.attacker_well_formed = parsed.well_formed
        e.prompt = parsed.text
        e.forfeited = attacker_forfeits(parsed)
        e.turns["attacker"] = (p_ids, c_ids)
        if gen.sampled_logprobs is not None:
            e.sampled_logprobs["attacker"] = gen.sampled_logprobs[i]
    for e in exchanges:
        if not e.revised:
            e.prompt = e.seed
    played = [e for e in exchanges if not e.forfeited]  # a forfeit hands the defender nothing
    gen = sample_turns("defender", [defender_prompt(tokenizer, game, e.prompt) for e in played],
                       [e.game for e in played])
    for i, (e, p_ids, c_ids, text) in enumerate(zip(played, gen.prompt_ids, gen.completion_ids, gen.texts)):
        e.defender_output = text
        e.response, e.defender_well_formed = read_defender_turn(game, text)
        e.turns["defender"] = (p_ids, c_ids)
        if gen.sampled_logprobs is not None:
            e.sampled_logprobs["defender"] = gen.sampled_logprobs[i]


def judge_games(exchanges: list[Exchange], judge, reward_table: dict, clock: PhaseClock | None = None) -> list[Exchange]:
    """The judge's verdict on every game whose defender answered, whether the answer is degenerate, and every
    game's rewards from the reward table. ``clock`` times the judge (``perf/judge_s``)."""
    played = [e for e in exchanges if "defender" in e.turns]
    if played:
        with clock("judge") if clock is not None else contextlib.nullcontext():
            verdicts = judge.score([e.prompt for e in played], [e.response for e in played],
                                   [e.seed_harmful for e in played])
        for e, v in zip(played, verdicts):
            e.verdict = v
            e.degenerate = degenerate_reply(e.response, v.off_topic)
    score_exchanges(exchanges, reward_table)
    return exchanges


class TurnSampler:
    """Samples a role's turns for the module's current bank, game and rollout settings.

    It reads them from the module at each call (``module.bank``, ``module.game``, ``module.rollout_cfg``, ...),
    so a setting changed on the module is seen here. It counts what a step sampled (:attr:`generated_tokens`)
    and the prompts it had to cut to fit the context (:attr:`truncated`); :meth:`reset` starts a step's count.
    """

    def __init__(self, module):
        self.module = module
        self.generated_tokens = 0
        self.truncated = 0

    def reset(self) -> None:
        self.generated_tokens = 0
        self.truncated = 0

    def for_batch(self, batch_index: int) -> SampleTurns:
        """The sampler :func:`play_games` calls for batch ``batch_index``."""
        return lambda role, prompts, games: self.sample(role, prompts, games, batch_index)

    def sample(self, role: str, prompts: list[str], games: list[int], batch_index: int) -> Generation:
        """``role``'s turns for ``prompts`` (of games ``games``), each with its game's key. Under FSDP2 every
        process generates in lockstep (``synced_gpus``), one with no turn of this role on a throw-away prompt."""
        m = self.module
        game, layout = m.game, m.layout
        new_tokens = game.max_new_tokens_attacker if role == "attacker" else game.max_new_tokens_defender
        keys = [sampling_key(batch_index, g, role) for g in games]
        if not prompts and not layout.generates_idle():
            return Generation([], [], [])
        prompts = self.fit_to_context(prompts, new_tokens, role)
        if m.rollout_cfg.backend == "vllm":
            with m.clock(f"rollout/{role}"):
                gen = m.vllm_engine().generate(m.bank.adapter_for(role), prompts, m.tokenizer, new_tokens,
                                               game.temperature, keys)
            self.generated_tokens += sum(len(c) for c in gen.completion_ids)
            return gen
        with m.clock(f"rollout/{role}"), m.bank.role(role) as model, gathered(m.bank), layout.no_grad():
            gen = generate(model, m.tokenizer, prompts or ["."], new_tokens, game.temperature, game.top_p,
                           synced_gpus=layout.generates_idle(), keys=keys or [0],
                           return_logprobs=m.old_logprobs_source == "sampler", decoding=m.rollout_cfg.hf)
        if not prompts:
            return Generation([], [], [])
        self.generated_tokens += sum(len(c) for c in gen.completion_ids)
        return gen

    def fit_to_context(self, prompts: list[str], new_tokens: int, role: str) -> list[str]:
        """Prompts that leave room for ``new_tokens`` in the model's context: longer ones lose tokens from their
        middle (``game.overlong_prompts: truncate``, counted in ``game/truncated_prompts``) or stop the run."""
        m = self.module
        config = getattr(m.bank.model, "config", None)
        context = getattr(config, "max_position_embeddings", None)
        if not context or m.tokenizer is None:
            return prompts
        room = context - new_tokens
        out, cut = [], 0
        for prompt in prompts:
            ids = m.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if len(ids) <= room:
                out.append(prompt)
                continue
            if m.game.overlong_prompts == "error" or room < 2:
                raise ConfigError("model.game.overlong_prompts", f"a {role} prompt of {len(ids)} tokens leaves no room "
                                  f"for {new_tokens} new tokens in the model's context of {context} (it starts "
                                  f"{prompt[:80]!r})", "shorten the seeds, lower max_new_tokens, or set "
                                  "overlong_prompts: truncate")
            out.append(m.tokenizer.decode(ids[:room // 2] + ids[len(ids) - (room - room // 2):]))
            cut += 1
        if cut:
            self.truncated += cut
            log.warning("%d %s prompts were cut to fit the context of %d tokens (model.game.overlong_prompts)",
                        cut, role, context)
        return out


# -- how the game is going ----------------------------------------------------------------------------
def judge_counts(exchanges: list[Exchange]) -> tuple[int, int]:
    """(exchanges sent to the judge, of which it left unlabelled): the games the defender played. A forfeit is
    never judged (the attacker is paid its table's minimum), so it is neither."""
    judged = [e for e in exchanges if "defender" in e.turns]
    return len(judged), sum(e.verdict is None or not e.verdict.complete for e in judged)


def game_metrics(exchanges: list[Exchange]) -> dict[str, float]:
    """Rates that say how the game is going (fractions in [0, 1]). ``degenerate_rate``: defender replies that are
    no answer at all (:mod:`abspo.rl.degenerate`); ``attacker_forfeit_rate``: attacker turns with nothing playable;
    ``unlabelled_rate``: of the exchanges sent to the judge (:func:`judge_counts`), those it left unlabelled."""
    labelled = [e for e in exchanges if e.verdict is not None and e.verdict.complete]
    harmful = [e for e in labelled if e.seed_harmful]
    benign = [e for e in labelled if not e.seed_harmful]
    attacks = [e for e in exchanges if e.revised]
    sent, unlabelled = judge_counts(exchanges)
    out = {
        "game/unlabelled_rate": unlabelled / max(1, sent),
        "game/unlabelled": float(unlabelled),
    }
    if harmful:
        out["game/attack_success_rate"] = sum(e.verdict.response_harmful for e in harmful) / len(harmful)
    if benign:
        out["game/benign_refusal_rate"] = sum(e.verdict.refusal for e in benign) / len(benign)
    if attacks:
        out["game/attacker_format_failure_rate"] = sum(not e.attacker_well_formed for e in attacks) / len(attacks)
        out["game/attacker_forfeit_rate"] = sum(e.forfeited for e in attacks) / len(attacks)
    answered = [e for e in exchanges if "defender" in e.turns]
    if answered:
        out["game/degenerate_rate"] = sum(e.degenerate is not None for e in answered) / len(answered)
    reasoning = [e for e in exchanges if e.defender_well_formed is not None]
    if reasoning:
        out["game/defender_format_failure_rate"] = sum(not e.defender_well_formed for e in reasoning) / len(reasoning)
    return out
