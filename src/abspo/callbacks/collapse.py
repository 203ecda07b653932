"""CollapseDiagnostics: is the game still a game? Four figures, every N batches, cheap enough to leave on.

When one set of weights plays both roles, self-play tends to collapse into self-consistency: the attacker stops
pressuring the defender it *is*, and the training curves cannot tell that from a defender that got safer. These
figures can (logged under ``diag/``, x-axis the batch index like every abspo scalar):

* **External pressure.** ``diag/pressure_vs_self``: the share of this batch's attacks (harmful seeds, revised,
  labelled) that beat the defender they played, the run's own. ``diag/pressure_vs_base``: the same attack
  prompts answered by the defender's frozen anchor (the base; its frozen starting adapter under ``model.anchor:
  initial``), judged the same way. That anchor is also the defender at step 0 (a role starts at its anchor: LoRA
  B = 0, an exact copy, or its starting adapter), so this is pressure against a fixed opponent. Its
  defender turn is sampled with the very key the game's defender used (common random numbers), so the two
  rates differ by the defenders, not by sampling noise. An attacker that keeps pressure on the base while its
  own defender stops conceding is a real adversary; one whose rates fall together has stopped attacking.
* **Gradient alignment.** Cosine between the attacker's and the defender's policy-gradient objectives (the
  training loss, on up to ``probe_games`` of the batch's turns per role, each at its role's current weights):
  ``diag/grad_cos_shared`` on the parameters the roles share (shared modes: the one adapter or the whole
  policy), and ``diag/grad_cos_probe`` on one fixed tensor every mode has, the base's last MLP output
  projection, so that modes are comparable (in ``bipolicy`` the roles share no trainable parameter). Near -1:
  the roles pull shared weights in opposite directions (an adversarial game); near +1: they agree (collusion).
* **Role divergence.** ``diag/role_kl``: KL(defender || attacker) of the next-token distributions, per token,
  on the same contexts (the batch's defender turns). 0 by construction when the roles share weights.
* **Attack diversity.** ``diag/attack_self_bleu`` (BLEU-4 of each attack prompt against the others),
  ``diag/attack_embedding_similarity`` (mean pairwise cosine of MiniLM embeddings) and
  ``diag/attack_seed_similarity`` (cosine of each prompt with the seed it rewrites: 1 = a copy of the seed).
  Rising similarity is the attacker converging on one trick (:mod:`abspo.rl.diversity`).

``diag/overhead_s`` is the time these took; at the end of training ``<run dir>/diagnostics.json`` holds every
series, the mean of the first and last third of each, and the overhead as a share of the training time, and a
summary is printed. Under data parallelism every process computes the same figures (the games are gathered); a
sharded (FSDP2) run logs the diversity figures only.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import torch

from abspo.rl import algorithms as alg
from abspo.core import run_folder
from abspo.core.atomic import atomic_write
from abspo.rl.diversity import mean_pairwise_cosine, paired_cosine, self_bleu
from abspo.game.rules import defender_prompt, read_defender_turn
from abspo.training.play import sampling_key
from abspo.rl.rollout import build_scoring_batch, completion_logits, completion_logprobs, generate
from abspo.weights.sharding import gathered
from abspo.training.step_logging import log_batch_metrics
from abspo.training.update import policy_loss

log = logging.getLogger(__name__)


class CollapseDiagnostics(L.Callback):
    def __init__(self, every_n_batches: int = 10, probe_games: int = 8, pressure: bool = True,
                 gradients: bool = True, divergence: bool = True, diversity: bool = True,
                 encoder_path: str | None = None):
        """
        Args:
            every_n_batches: Measure on batches 0, N, 2N, ... (after that batch's update).
            probe_games: Turns per role (and attacks) the model-based figures use, at most.
            pressure: Answer the batch's attacks with the frozen base too (one extra defender generation).
            gradients: Cosine of the roles' policy gradients (one forward and backward per role).
            divergence: KL between the roles' next-token distributions (two forwards).
            diversity: Self-BLEU and embedding similarities of the attack prompts (a sentence encoder).
            encoder_path: Sentence-transformers folder for the embeddings; default: the judge's MiniLM.
        """
        if every_n_batches < 1 or probe_games < 1:
            raise ValueError("every_n_batches and probe_games must be >= 1")
        self.every_n_batches = every_n_batches
        self.probe_games = probe_games
        self.pressure, self.gradients, self.divergence, self.diversity = pressure, gradients, divergence, diversity
        self.encoder_path = encoder_path
        self._encoder = None
        self.series: dict[str, list[tuple[int, float]]] = {}
        self.overhead_s = 0.0
        self.seconds_by_figure: dict[str, float] = {}
        self._train_start: float | None = None
        self.probe_name: str | None = None

    # -- hooks ------------------------------------------------------------------------------------
    def on_train_start(self, trainer, module) -> None:
        self._train_start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch.index % self.every_n_batches:
            return
        start = time.perf_counter()
        metrics = self.measure(module, module.last_exchanges, batch.index)
        metrics["diag/overhead_s"] = time.perf_counter() - start
        self.overhead_s += metrics["diag/overhead_s"]
        for key, value in metrics.items():
            self.series.setdefault(key, []).append((batch.index, value))
        log_batch_metrics(module, metrics, step=batch.index, every_n_steps=1)

    def on_train_end(self, trainer, module) -> None:
        if not trainer.is_global_zero or not self.series:
            return
        summary = self.summary(time.perf_counter() - (self._train_start or time.perf_counter()))
        atomic_write(Path(trainer.default_root_dir) / run_folder.DIAGNOSTICS, json.dumps(summary, indent=2) + "\n")
        lines = [f"  {k}: {v['first']:.3f} -> {v['last']:.3f}" for k, v in summary["metrics"].items()
                 if k != "diag/overhead_s"]
        print("collapse diagnostics (mean of the first -> last third of the run):\n" + "\n".join(lines)
              + f"\n  overhead: {summary['overhead']['seconds']:.1f} s, "
              f"{100 * summary['overhead']['fraction']:.1f}% of training")

    # -- the figures --------------------------------------------------------------------------------
    def measure(self, module, exchanges, batch_index: int) -> dict[str, float]:
        """Every enabled figure for one batch's scored ``exchanges`` (the module's current weights); the seconds
        each group took are added to :attr:`seconds_by_figure`."""
        out: dict[str, float] = {}
        sharded = module.layout.sharded
        figures = {"diversity": (self.diversity, lambda: self.attack_diversity(module, exchanges)),
                   "pressure": (self.pressure and not sharded,
                                lambda: self.external_pressure(module, exchanges, batch_index)),
                   "gradients": (self.gradients and not sharded, lambda: self.gradient_alignment(module, exchanges)),
                   "divergence": (self.divergence and not sharded, lambda: self.role_kl(module, exchanges))}
        for name, (enabled, compute) in figures.items():
            if enabled:
                start = time.perf_counter()
                out.update(compute())
                self.seconds_by_figure[name] = self.seconds_by_figure.get(name, 0.0) + time.perf_counter() - start
        return out

    def role_kl(self, module, exchanges) -> dict[str, float]:
        kl = self.role_divergence(module, exchanges)
        return {} if kl is None else {"diag/role_kl": kl}

    def attacks(self, exchanges):
        """The batch's played attacks on harmful seeds, judged: what pressure is measured on."""
        return [e for e in exchanges if e.revised and e.seed_harmful and not e.forfeited and e.verdict is not None
                and e.verdict.response_harmful is not None][: self.probe_games]

    def external_pressure(self, module, exchanges, batch_index: int) -> dict[str, float]:
        attacks = self.attacks(exchanges)
        if not attacks:
            return {}
        game = module.game
        prompts = [defender_prompt(module.tokenizer, game, e.prompt) for e in attacks]
        keys = [sampling_key(batch_index, e.game, "defender") for e in attacks]
        with torch.no_grad(), module.bank.anchor("defender") as model, gathered(module.bank):
            gen = generate(model, module.tokenizer, prompts, game.max_new_tokens_defender, game.temperature,
                           game.top_p, keys=keys)
        responses = [read_defender_turn(game, text)[0] for text in gen.texts]
        verdicts = module.judge.score([e.prompt for e in attacks], responses, [True] * len(attacks))
        vs_base = [v.response_harmful for v in verdicts if v.response_harmful is not None]
        out = {"diag/pressure_vs_self": sum(e.verdict.response_harmful for e in attacks) / len(attacks)}
        if vs_base:
            out["diag/pressure_vs_base"] = sum(vs_base) / len(vs_base)
        return out

    def gradient_alignment(self, module, exchanges) -> dict[str, float]:
        bank = module.bank
        shared = roles_share_weights(bank)
        name, probe = probe_tensor(bank)
        self.probe_name = name
        shared_params = list(bank.role_parameters("attacker")) if shared else []
        grads = {}
        frozen = not probe.requires_grad
        probe.requires_grad_(True)  # a frozen base tensor, for this measurement only
        try:
            for role in ("attacker", "defender"):
                grads[role] = self.role_gradient(module, role, exchanges, [probe, *shared_params])
        finally:
            if frozen:
                probe.requires_grad_(False)
        if grads["attacker"] is None or grads["defender"] is None:
            return {}
        out = {}
        cos = cosine(grads["attacker"][:1], grads["defender"][:1])
        if cos is not None:
            out["diag/grad_cos_probe"] = cos
        if shared:
            cos = cosine(grads["attacker"][1:], grads["defender"][1:])
            if cos is not None:
                out["diag/grad_cos_shared"] = cos
        return out

    def role_gradient(self, module, role: str, exchanges, params) -> list[torch.Tensor | None] | None:
        """Gradient of ``role``'s training loss on up to ``probe_games`` of its turns, w.r.t. ``params``.

        The turns, advantages and anchor log-probs are those of the role's latest update when the module kept
        them (``module.updater.last_rollouts``, rows of this batch); else they are computed from ``exchanges``."""
        kept = exchanges is module.last_exchanges  # the batch the latest update trained on
        rollout = module.updater.last_rollouts.get(module.bank.adapter_for(role)) if kept else None
        if rollout is None or role not in rollout.roles:
            mine = [e for e in exchanges if role in e.rewards and role in e.turns][: self.probe_games]
            rollout = module.updater.rollout_batch([role], mine) if mine else None
            if rollout is None:
                return None
        rows = [i for i, r in enumerate(rollout.roles) if r == role][: self.probe_games]
        batch, adv, ref, _, sampler = rollout.rows(rows, module.pad_id, module.device)
        with module.bank.role(role) as model, module.bank.update_mode(), torch.enable_grad():
            logp, _ = completion_logprobs(model, batch, temperature=module.game.temperature)
            loss, _ = policy_loss(module.algorithm, logp, logp.detach(), ref, adv, batch.completion_mask, on_policy=True,
                                  sampler=sampler)
            return list(torch.autograd.grad(loss, params, allow_unused=True))

    @torch.no_grad()
    def role_divergence(self, module, exchanges) -> float | None:
        bank = module.bank
        if roles_share_weights(bank):
            return 0.0  # the same weights on the same context: the same distribution
        turns = [e.turns["defender"] for e in exchanges if "defender" in e.turns][: self.probe_games]
        if not turns:
            return None
        batch = build_scoring_batch([p for p, _ in turns], [c for _, c in turns], module.pad_id, module.device)
        logps = {}
        for role in ("defender", "attacker"):
            with bank.role(role) as model:
                logps[role] = torch.log_softmax(completion_logits(model, batch, module.game.temperature), dim=-1)
        p_def = logps["defender"].exp()
        kl = (p_def * (logps["defender"] - logps["attacker"])).sum(-1)
        return float(alg.masked_mean(kl, batch.completion_mask))

    def attack_diversity(self, module, exchanges) -> dict[str, float]:
        attacks = [e for e in exchanges if e.revised and not e.forfeited and e.prompt]
        out = {}
        bleu = self_bleu([e.prompt for e in attacks])
        if bleu is None:
            return out
        out["diag/attack_self_bleu"] = bleu
        encoder = self.encoder(module)
        prompts = torch.as_tensor(encoder.encode([e.prompt for e in attacks], convert_to_numpy=True))
        seeds = torch.as_tensor(encoder.encode([e.seed for e in attacks], convert_to_numpy=True))
        out["diag/attack_embedding_similarity"] = mean_pairwise_cosine(prompts)
        out["diag/attack_seed_similarity"] = paired_cosine(prompts, seeds)
        return out

    def encoder(self, module):
        if self._encoder is None:
            judge_encoder = getattr(module.judge, "encoder", None)
            if self.encoder_path is None and judge_encoder is not None and hasattr(judge_encoder, "encode"):
                self._encoder = judge_encoder  # the HeuristicJudge's MiniLM, already in memory
            else:
                from abspo.judges.heuristic import load_encoder

                self._encoder = load_encoder(self.encoder_path)
        return self._encoder

    # -- the end-of-run summary --------------------------------------------------------------------
    def summary(self, train_seconds: float) -> dict:
        metrics = {}
        for key, points in self.series.items():
            values = [v for _, v in points]
            third = max(1, len(values) // 3)
            metrics[key] = {"first": sum(values[:third]) / third, "last": sum(values[-third:]) / third,
                            "points": len(values)}
        return {"every_n_batches": self.every_n_batches, "probe_games": self.probe_games, "probe": self.probe_name,
                "metrics": metrics, "series": {k: [[i, v] for i, v in pts] for k, pts in self.series.items()},
                "overhead": {"seconds": self.overhead_s, "train_seconds": train_seconds,
                             "seconds_by_figure": dict(self.seconds_by_figure),
                             "fraction": self.overhead_s / train_seconds if train_seconds > 0 else 0.0}}


def roles_share_weights(bank) -> bool:
    """Both roles train the same parameters (the shared modes)."""
    return bank.adapter_for("attacker") == bank.adapter_for("defender")


def probe_tensor(bank) -> tuple[str, torch.nn.Parameter]:
    """The common probe of gradient alignment: the base's last MLP output projection (``down_proj``) weight,
    which every mode has (frozen under LoRA, trained in shared_full); else its last 2-D weight."""
    candidates = [(n, p) for n, p in bank.model.named_parameters() if "lora_" not in n and p.dim() == 2
                  and "embed" not in n and "lm_head" not in n]
    down = [(n, p) for n, p in candidates if "down_proj" in n]
    return (down or candidates)[-1]


def cosine(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> float | None:
    """Cosine of two gradients given as lists of tensors (None: no gradient, i.e. zero); None if one is zero."""
    dot = na = nb = torch.zeros((), dtype=torch.float64)
    for x, y in zip(a, b):
        x = None if x is None else x.double()
        y = None if y is None else y.double()
        if x is not None:
            na = na + x.square().sum()
        if y is not None:
            nb = nb + y.square().sum()
        if x is not None and y is not None:
            dot = dot + (x * y).sum()
    if na == 0 or nb == 0:
        return None
    return float(dot / (na.sqrt() * nb.sqrt()))
