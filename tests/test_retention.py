"""Reasoning tasks and the ReasoningRetention callback, on the tiny model inside a real Trainer.

The tiny model is random, so it solves nothing; to get a task the anchor is right on, the multiple-choice
labels below are the anchor's own choices, computed here with a naive one-sequence-at-a-time forward pass
(which also checks the task's batched, padded scoring). A drop is then made honestly: a callback ahead of
ReasoningRetention adds heavy noise to the defender's LoRA weights, so the defender forgets.
"""

from __future__ import annotations

import json
import operator
import re
import time
import warnings
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from abspo.callbacks.retention import STOP_CHECKPOINT, ReasoningRetention, RetentionWarning
from abspo.core.config import OptimizerConfig
from abspo.game.seeds import SeedDataModule
from abspo.core.errors import ConfigError
from abspo.evaluation.tasks import (ChoiceItem, ExactMatchTask, Outcome, QAItem, Task, TaskSpec, arithmetic_items,
                                    build_task, evaluate)
from abspo.game.rules import GameConfig, chat_prompt
from abspo.weights.models import load_base
from abspo.training.module import SelfPlayModule
from tests.conftest import TINY, perturb

QUESTIONS = [
    ("What is the capital of France?", ["Paris", "Rome", "It is a large city in the north of the country."]),
    ("Which animal barks?", ["A dog", "A cat", "None"]),
    ("What colour is the sky on a clear day?", ["Blue", "Green with red stripes", "Yellow"]),
    ("How many legs does a spider have?", ["Eight", "Six", "Four legs and two arms"]),
    ("What do bees make?", ["Honey", "Milk", "Silk"]),
    ("Which is a fruit?", ["An apple", "A carrot", "A potato, which grows underground"]),
    ("What is frozen water called?", ["Ice", "Steam", "Sand"]),
    ("Which planet do we live on?", ["Earth", "Mars", "Jupiter, the largest planet"]),
    ("What do you use to write on paper?", ["A pen", "A spoon", "A fork"]),
    ("Which season is the coldest?", ["Winter", "Summer", "Spring"]),
    ("What is 2 plus 2?", ["4", "5", "twenty-two"]),
    ("Which shape has three sides?", ["A triangle", "A square", "A circle"]),
]


# -- helpers -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def naive_choice_scores(model, tok, question: str, choices: list[str]) -> list[float]:
    """Mean log-prob per token of each choice, one unpadded sequence at a time (the reference for the batched code)."""
    context = tok(chat_prompt(tok, question), add_special_tokens=False).input_ids
    out = []
    for choice in choices:
        completion = tok(choice, add_special_tokens=False).input_ids
        ids = torch.tensor([context + completion])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        token_logp = logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]][-len(completion):]
        out.append(float(token_logp.mean()))
    return out


@pytest.fixture(scope="module")
def anchor_choices():
    """The tiny anchor's preferred choice of each question, and its naive scores."""
    model, tok = load_base(TINY)
    scores = [naive_choice_scores(model, tok, q, c) for q, c in QUESTIONS]
    return [max(range(len(s)), key=s.__getitem__) for s in scores], scores


@pytest.fixture
def mc_file(tmp_path, anchor_choices):
    """A multiple-choice file the anchor gets 100% on (labels are its own choices; letters and indices mixed)."""
    picks, _ = anchor_choices
    path = tmp_path / "mc.jsonl"
    lines = [{"question": q, "choices": c, "answer": "ABC"[p] if i % 2 else p}
             for i, ((q, c), p) in enumerate(zip(QUESTIONS, picks))]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


class Forget(L.Callback):
    """Make the defender forget: heavy noise on its LoRA weights after the first batch (before the check)."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch.index == 0:
            perturb(module.bank.role_parameters("defender"), seed=1, scale=5.0)


def fit(tmp_path, judge, callbacks, max_steps: int, lr: float = 1e-2, logger=False, log_every_n_steps: int = 50,
        **module_kwargs) -> tuple[L.Trainer, SelfPlayModule]:
    module = SelfPlayModule(base=TINY, judge=judge, game=GameConfig(max_new_tokens_attacker=8, max_new_tokens_defender=8),
                            optimizers={"attacker": OptimizerConfig(lr=lr), "defender": OptimizerConfig(lr=lr)},
                            **module_kwargs)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, enable_progress_bar=False, logger=logger,
                        log_every_n_steps=log_every_n_steps,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=callbacks)
    trainer.fit(module, datamodule=SeedDataModule(batch_size=4))
    return trainer, module


# -- the callback in a real Trainer ------------------------------------------------------------------------------
def test_warn_logs_a_warning_and_training_continues(tmp_path, judge, mc_file):
    retention = ReasoningRetention(TaskSpec("multiple_choice", str(mc_file), n=50), every_n_steps=2, max_drop=0.2,
                                   batch_size=5)
    with pytest.warns(RetentionWarning, match="defender scores") as record:
        trainer, _ = fit(tmp_path, judge, [Forget(), retention], max_steps=4)
    assert trainer.global_step == 4, "warn must not stop the run"
    assert len([w for w in record if issubclass(w.category, RetentionWarning)]) == 2, "checked at steps 2 and 4"
    m = trainer.callback_metrics
    assert float(m["retention/anchor/score"]) == 1.0, "batched scoring must agree with the naive reference"
    assert float(m["retention/anchor/n"]) == float(m["retention/defender/n"]) == len(QUESTIONS)
    drop = float(m["retention/defender/drop"])
    assert drop > 0.2 and drop == pytest.approx(1.0 - float(m["retention/defender/score"]))
    assert "retention/attacker/score" not in m, "only the defender by default"
    assert not (tmp_path / "checkpoints" / STOP_CHECKPOINT).exists()


def test_stop_saves_a_checkpoint_and_ends_the_run_early(tmp_path, judge, mc_file):
    retention = ReasoningRetention(TaskSpec("multiple_choice", str(mc_file)), every_n_steps=2, max_drop=0.2,
                                   on_violation="stop")
    with pytest.warns(RetentionWarning, match="stopping"):
        trainer, module = fit(tmp_path, judge, [Forget(), retention], max_steps=8)
    assert trainer.global_step == 2 < 8, "stopped after the batch whose check failed"
    path = tmp_path / "checkpoints" / STOP_CHECKPOINT
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    saved = {k: v for k, v in ckpt["state_dict"].items() if ".lora_B.defender." in k}
    current = {k: v for k, v in module.state_dict().items() if ".lora_B.defender." in k}
    assert saved and saved.keys() == current.keys()
    assert all(torch.equal(saved[k], current[k]) for k in saved), "the checkpoint holds the forgetful defender"
    assert all(".lora_" in k for k in ckpt["state_dict"]), "adapters only, as every abspo checkpoint"


def test_metrics_reach_the_logger_only_at_the_batches_that_measured_them(tmp_path, judge, mc_file):
    """Lightning's self.log re-sends a step value at every later step of the epoch; abspo logs each batch's own."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    from abspo.core.config import ScheduleConfig

    retention = ReasoningRetention(TaskSpec("multiple_choice", str(mc_file)), every_n_steps=3, max_drop=1.0)
    logger = CSVLogger(tmp_path, name="csv", version="")
    # phases: batch 0 updates the attacker, batch 1 the defender, ...: one optimizer step per batch, so the
    # checks at global steps 3 and 6 fall on batches 2 and 5.
    fit(tmp_path, judge, [retention], max_steps=6, logger=logger, log_every_n_steps=2,
        schedule=ScheduleConfig(mode="phases", phase_steps=1, first="attacker"))
    with open(tmp_path / "csv" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    def steps_with(column):
        return sorted({int(r["step"]) for r in rows if r.get(column) not in (None, "")})
    assert steps_with("game/attack_success_rate") == [1, 3, 5], "log_every_n_steps: 2 thins the per-batch metrics"
    assert steps_with("defender/loss") == [1, 3, 5] and steps_with("attacker/loss") == [], "odd batches: defender"
    assert steps_with("retention/defender/score") == steps_with("retention/anchor/score") == [2, 5], \
        "a check is logged at its own batch, whatever log_every_n_steps says, and never repeated"


def test_unchanged_roles_match_the_anchor_and_the_time_budget_bounds_a_check(tmp_path, judge, mc_file):
    # lr 0: the adapters stay at B = 0, so both roles ARE the anchor and must score exactly like it.
    retention = ReasoningRetention(TaskSpec("multiple_choice", str(mc_file)), every_n_steps=2,
                                   roles=["defender", "attacker"], max_drop=0.0, batch_size=5, time_budget_s=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RetentionWarning)
        trainer, _ = fit(tmp_path, judge, [retention], max_steps=4, lr=0.0)
    assert trainer.global_step == 4
    m = retention.last
    assert m["retention/anchor/n"] == m["retention/defender/n"] == m["retention/attacker/n"] == 5, \
        "the budget is spent after the first batch of 5 items"
    assert m["retention/anchor/score"] == m["retention/defender/score"] == m["retention/attacker/score"] == 1.0
    assert m["retention/defender/drop"] == m["retention/attacker/drop"] == 0.0


def test_a_check_restores_modes_and_routing_and_scores_in_eval_mode(judge, mc_file):
    module = SelfPlayModule(base=TINY, judge=judge)
    retention = ReasoningRetention(TaskSpec("multiple_choice", str(mc_file), n=3))
    model = module.bank.model
    model.train()
    frozen = next(m for m in model.modules() if m is not model and len(list(m.parameters())) > 0)
    frozen.eval()
    seen = []
    hook = frozen.register_forward_hook(lambda m, i, o: seen.append(m.training))
    module.bank._route("attacker", enabled=True)
    try:
        retention.score(module, module.bank.role("defender"))
    finally:
        hook.remove()
    assert seen and not any(seen), "scoring runs in eval mode"
    assert model.training and not frozen.training, "each submodule's own mode is restored"
    assert module.bank._active == ("attacker", True), "routing is restored"


# -- the tasks ---------------------------------------------------------------------------------------------------
def test_batched_choice_scores_equal_the_naive_reference(anchor_choices, mc_file):
    model, tok = load_base(TINY)
    task = build_task(TaskSpec("multiple_choice", str(mc_file), n=100))
    _, naive = anchor_choices
    batched = task.choice_logprobs(model, tok, task.items)
    assert torch.allclose(torch.tensor(batched), torch.tensor(naive), atol=1e-4)
    summed = build_task(TaskSpec("multiple_choice", str(mc_file), normalise="sum")).choice_logprobs(model, tok, task.items[:2])
    lengths = [[len(tok(c, add_special_tokens=False).input_ids) for c in item.choices] for item in task.items[:2]]
    expected = [[s * n for s, n in zip(row, ls)] for row, ls in zip(naive[:2], lengths)]
    assert torch.allclose(torch.tensor(summed), torch.tensor(expected), atol=1e-3)


class Calculator(torch.nn.Module):
    """A stand-in model whose greedy answer to 'What is a op b?' is 'a op b = result' (+ ``error``)."""

    def __init__(self, tokenizer, error: int = 0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.error, self.prompts = tokenizer, error, []
        self.generation_config = SimpleNamespace(eos_token_id=tokenizer.eos_token_id)

    def generate(self, input_ids, attention_mask, generation_config, **kwargs):
        assert not generation_config.do_sample, "retention scoring is greedy"
        max_new_tokens = generation_config.max_new_tokens
        ops = {"+": operator.add, "-": operator.sub, "*": operator.mul}
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = self.tok.decode(ids[mask.bool()])
            self.prompts.append(prompt)
            a, op, b = re.search(r"What is (\d+) ([-+*]) (\d+)\?", prompt).groups()
            answer = f"{a} {op} {b} = {ops[op](int(a), int(b)) + self.error}."
            rows.append((self.tok(answer, add_special_tokens=False).input_ids + [self.tok.eos_token_id])[:max_new_tokens])
        width = max(map(len, rows))
        new = torch.tensor([r + [self.tok.pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)


def test_arithmetic_is_scored_through_the_chat_template():
    _, tok = load_base(TINY)
    task = build_task(TaskSpec("arithmetic", n=10, seed=3), max_new_tokens=32)
    right, wrong = Calculator(tok), Calculator(tok, error=1)
    result = evaluate(task, right, tok, batch_size=4)
    assert result.correct == [True] * 10
    a, op, b = re.search(r"(\d+) ([-+*]) (\d+)", task.items[0].question).groups()
    assert result.outputs[0] == f"{a} {op} {b} = {task.items[0].target}."
    assert evaluate(task, wrong, tok, batch_size=4).score == 0.0
    assert len(right.prompts) == 10
    assert right.prompts[0] == chat_prompt(tok, task.items[0].question + " Answer with just the number.")


def test_arithmetic_items_are_seeded_right_and_mixed():
    items = arithmetic_items(40, seed=0)
    assert items == arithmetic_items(40, seed=0) and items != arithmetic_items(40, seed=1)
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul}
    for item in items:
        a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", item.question).groups()
        assert int(item.target) == ops[op](int(a), int(b)) >= 0
    assert {re.search(r"[-+*]", i.question).group() for i in items} == {"+", "-", "*"}
    assert len({i.question for i in items}) > 30


def test_gsm8k_sample_is_seeded_and_keeps_the_file_finals():
    task = build_task(TaskSpec("gsm8k", n=5, seed=0))
    with open("data/eval/gsm8k.jsonl", encoding="utf-8") as fh:
        finals = {row["question"]: row["final"] for row in map(json.loads, fh)}
    assert len(task) == 5 and all(finals[i.question] == i.target for i in task.items)
    assert task.items == build_task(TaskSpec("gsm8k", n=5, seed=0)).items
    assert task.items != build_task(TaskSpec("gsm8k", n=5, seed=1)).items
    assert len(build_task(TaskSpec("gsm8k", n=10_000))) == len(finals)
    assert task.max_new_tokens == 256 and "####" in task.prompts(load_base(TINY)[1], task.items[:1])[0]


def test_time_budget_stops_starting_batches():
    class Slow(Task):
        name, items = "slow", list(range(10))

        def score(self, model, tokenizer, items):
            time.sleep(0.02)
            return [Outcome(True, str(i)) for i in items]

    cut = evaluate(Slow(), None, None, batch_size=3, time_budget_s=0.01)
    assert cut.scored == 3 and cut.total == 10 and not cut.complete
    full = evaluate(Slow(), None, None, batch_size=3)
    assert full.scored == 10 and full.complete and full.score == 1.0
    limited = evaluate(Slow(), None, None, batch_size=3, limit=4)
    assert limited.correct == [True] * 4 and limited.outputs == ["0", "1", "2", "3"]


@pytest.mark.parametrize("lines, spec, message", [
    (None, dict(name="gsm8k"), "does not exist"),
    (['{"question": "q", "final": "1"}', "{not json"], dict(name="gsm8k"), ":2 is not valid JSON"),
    (['{"question": "q", "final": "one"}'], dict(name="gsm8k"), ":1 has no numeric field 'final'"),
    (['{"final": "1"}'], dict(name="gsm8k"), ":1 has no non-empty string field 'question'"),
    (["", "[1, 2]"], dict(name="gsm8k"), ":2 is not a JSON object"),
    ([""], dict(name="gsm8k"), "is empty"),
    (['{"question": "q", "choices": ["a"], "answer": 0}'], dict(name="multiple_choice"), ":1: 'choices' must be"),
    (['{"question": "q", "choices": ["a", "b"], "answer": 2}'], dict(name="multiple_choice"), ":1: answer 2 is out of range"),
    (['{"question": "q", "choices": ["a", "b"], "answer": "C"}'], dict(name="multiple_choice"), "out of range"),
    (['{"question": "q", "choices": ["a", "b"], "answer": "1"}'], dict(name="multiple_choice"), "0-based index or a letter"),
    (['{"question": "q", "choices": ["a", "b"], "answer": true}'], dict(name="multiple_choice"), "0-based index or a letter"),
])
def test_bad_task_files_name_the_key_and_the_line(tmp_path, lines, spec, message):
    path = tmp_path / "task.jsonl"
    if lines is not None:
        path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        ReasoningRetention(TaskSpec(path=str(path), **spec))
    assert err.value.key == "trainer.callbacks[ReasoningRetention].init_args.task.path"
    assert str(path) in str(err.value)


def test_multiple_choice_accepts_letters_and_indices(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text('{"question": "q", "choices": ["a", "b", "c"], "answer": "b"}\n'
                    '{"question": "r", "choices": ["a", "b"], "answer": 0}\n')
    task = build_task(TaskSpec("multiple_choice", str(path)))
    assert task.items == [ChoiceItem("q", ("a", "b", "c"), 1), ChoiceItem("r", ("a", "b"), 0)]


@pytest.mark.parametrize("kwargs, key", [
    (dict(task=TaskSpec("multiple_choice")), "task.path"),
    (dict(task=TaskSpec("mmlu")), "task.name"),
    (dict(task=TaskSpec(n=0)), "task.n"),
    (dict(roles=["judge"]), "roles"),
    (dict(on_violation="ignore"), "on_violation"),
    (dict(every_n_steps=0), "every_n_steps"),
    (dict(max_drop=-0.1), "max_drop"),
    (dict(time_budget_s=0), "time_budget_s"),
])
def test_bad_callback_arguments_are_config_errors(kwargs, key):
    with pytest.raises(ConfigError) as err:
        ReasoningRetention(**kwargs)
    assert err.value.key == f"trainer.callbacks[ReasoningRetention].init_args.{key}"


def test_exact_match_items_keep_their_target_text():
    task = ExactMatchTask("t", [QAItem("What is 1 + 1?", "2")], "", 4)
    assert task.items[0].target == "2" and len(task) == 1
