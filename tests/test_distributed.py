"""Data parallel (DDP) and sharded (FSDP2) self-play over gloo on 2 CPU processes: N processes on B/N games
each equal 1 process on B games.

Tolerances: the two runs play the same games (keyed sampling) and compute the same sums, in another order
(two micro-batches of 4 rows against one of 8, and a sum over processes), so gradients differ by float32
rounding, ~1e-7 relative. Adam divides each gradient by its own running scale, which can turn such a rounding
difference on a near-zero component into a visible one: after 2 steps at lr 1e-2 the largest difference seen is
~1e-5, against adapter entries of ~0.1; after 4 steps (the tiny config's run) 3 of 8,192 entries of an adapter
were past 1e-5 and one at 2.2e-4, every other within 3e-7. So: every entry within ``MAX_TOL`` 1e-3 (a tenth of a
step) and at most ``OUTLIERS`` (0.1%) of them past ``ATOL`` 1e-4 (1% of a step). An error that changes the
direction of an update (a missing gradient sum, a per-process whitening or reward normalisation) moves most
entries by ~lr and fails both. Adam hides a wrong *scale* (an average instead of a sum), so the logged gradient
norms and losses are compared too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from abspo.cli import cli_main, main
from abspo.weights.distributed import Collective
from abspo.weights.models import load_base
from tests import collective_worker
from tests import distributed_worker as worker
from tests.conftest import TINY

pytestmark = pytest.mark.slow  # two gloo processes per test (torchrun or the environment), whole fits

ATOL = 1e-4
MAX_TOL = 1e-3
OUTLIERS = 1e-3
ABSPO = str(Path(sys.executable).parent / "abspo")


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())


def _env() -> dict:
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path.cwd()))
    env.pop("LOCAL_RANK", None)
    return env


def assert_adapters_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert diff.max().item() <= MAX_TOL, f"adapters differ by {diff.max().item():.2e} > {MAX_TOL}"
    outliers = (diff > ATOL).float().mean().item()
    assert outliers <= OUTLIERS, f"{outliers:.2%} of the adapters' entries differ by more than {ATOL}"


def test_shards_cover_the_batch_once_and_interleave():
    for n in (0, 1, 5, 8):
        for world in (1, 2, 3):
            parts = [list(range(n)[Collective(world, r).shard(n)]) for r in range(world)]
            assert sorted(i for p in parts for i in p) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert list(range(8)[Collective(2, 1).shard(8)]) == [1, 3, 5, 7]


def test_attacker_turns_are_spread_over_processes():
    """The unrevised seeds are the first of each label; interleaved shares give every process its part of the
    attacker's turns (contiguous ones gave this batch's 64 revised seeds as [0, 0, 0, 0, 16, 16, 16, 16])."""
    from abspo.game.seeds import Seed
    from abspo.training.play import unrevised_seeds

    seeds = [Seed(str(i), i % 3 == 0) for i in range(128)]
    unrevised = unrevised_seeds(seeds, 0.5)
    revised = [sum(i not in unrevised for i in range(128)[Collective(8, r).shard(128)]) for r in range(8)]
    assert sum(revised) == 64 and max(revised) - min(revised) <= 2, revised


def free_port() -> int:
    """A TCP port nothing listens on, for a rendezvous on this machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_two(worker_fn, tmp_path) -> dict:
    """Run ``worker_fn(rank, port, out)`` on 2 gloo processes; what rank 0 saved to ``out``."""
    out = tmp_path / "rank0.pt"
    torch.multiprocessing.spawn(worker_fn, args=(free_port(), str(out)), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


def test_a_gradient_no_process_has_stays_absent_so_adamw_skips_it(tmp_path):
    """Summed over processes, a gradient one process has is that gradient; one no process has stays None, as on one
    process, so AdamW leaves that parameter alone (zeros would move it by weight decay and momentum)."""
    got = spawn_two(collective_worker.absent_gradient_worker, tmp_path)
    assert torch.equal(got["a_grad"], torch.full((3,), 2.0))
    assert got["b_grad_is_none"] and torch.equal(got["b"], torch.ones(2)), "b had no gradient anywhere: untouched"


def test_a_time_budget_stops_every_process_at_the_same_batch(tmp_path):
    """ReasoningRetention's budget: a process over it stops the others too (under FSDP2 each forward is a
    collective, so a process stopping alone would leave another waiting in its next batch)."""
    assert spawn_two(collective_worker.time_budget_worker, tmp_path)["scored"] == [2, 2]


@pytest.fixture(scope="module")
def one_process_update():
    one = worker.module()
    return one, worker.play_and_learn(one, Collective())


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_processes_update_as_one_even_when_one_has_no_attacker_turn(tmp_path, mode, one_process_update):
    out = tmp_path / "rank0.pt"
    proc = torchrun(str(Path(worker.__file__)), mode, str(out))  # a hang fails on the process group's timeout
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(out, weights_only=True)
    assert two["stats"]["local_attacker_turns"] == 0, "rank 0's share must have no attacker turn (the case tested)"
    if mode == "fsdp2":
        assert two["stats"]["uneven_generation_tokens"] <= 3, "rank 0 stopped at its own budget, rank 1 went on"
        cuts = two["stats"]["micro_batches"]  # rank 0's, capped in tokens: rows 2 to a micro-batch, then an empty
        assert any(0 in cut and max(cut) > 1 for cut in cuts), f"rank 1 ran one micro-batch more than rank 0: {cuts}"

    one, stats = one_process_update
    assert stats["attacker/samples"] > 0 and stats["defender/samples"] > 0
    assert_adapters_close(two["adapters"], one.bank.adapter_state_dict())
    for key in ("attacker/kl", "defender/kl", "attacker/loss", "defender/loss", "defender/entropy",
                "attacker/grad_norm", "defender/grad_norm", "attacker/samples", "defender/samples"):
        assert two["stats"][key] == pytest.approx(stats[key], abs=1e-5), key
    before = worker.module().bank.adapter_state_dict()
    assert max((before[k] - one.bank.adapter_state_dict()[k]).abs().max().item() for k in before) > 10 * ATOL, \
        "the update moved the adapters by more than the tolerance"


def fit(*args: str, timeout: int = 300) -> None:
    """``abspo fit`` in a subprocess: the runs that launch processes of their own."""
    proc = subprocess.run([ABSPO, "fit", *args], capture_output=True, text=True, timeout=timeout, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]


def fit_here(*args: str) -> None:
    """``abspo fit`` in this process (no start-up to pay): the 1-process runs that need no process group."""
    cli_main(["fit", *args])


def exported(root: Path, name: str) -> dict[str, torch.Tensor]:
    return {f"{role}/{k}": v for role in ("attacker", "defender")
            for k, v in load_file(root / name / "adapters" / role / "adapter_model.safetensors").items()}


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    fit_here("--config", "configs/tiny.yaml", "--run.output_root", str(root), "--run.name", "run")
    return exported(root, "run")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """The tiny model saved as a Hugging Face folder (safetensors): a base that can be loaded shard by shard."""
    folder = tmp_path_factory.mktemp("tiny-model")
    model, tokenizer = load_base(TINY)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_fsdp2_run_loaded_by_shards_stopped_and_resumed_equals_one_process(tmp_path, tiny_folder, capsys):
    """Sharded, the base built on the meta device and filled shard by shard from its safetensors file, stopped
    after each of 3 batches and resumed on another process count each time (2, then 1, then 2 processes:
    torch.distributed.checkpoint reshards the adapters and optimizer states on load): the adapters of an
    uninterrupted 1-process run on the same base."""
    base = ["--model.base.name_or_path", str(tiny_folder)]
    fit_here("--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path), "--run.name", "one", *base,
             "--trainer.max_steps", "6")
    sharded = ["--config", "configs/tiny-fsdp2.yaml", "--run.output_root", str(tmp_path), "--run.name", "run", *base,
               "--model.base.init_on_meta", "true"]
    fit(*sharded, "--trainer.max_steps", "2")
    folder = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert folder.is_dir(), "a sharded checkpoint is a torch.distributed.checkpoint folder"
    from torch.distributed.checkpoint import FileSystemReader

    saved = FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    tensors = [k for k in saved if k.startswith("state_dict.")]
    assert tensors and all(".lora_" in k for k in tensors), "adapter shards only, never the base"
    fit(*sharded, "--trainer.devices", "1", "--trainer.max_steps", "4", "--ckpt_path", "last")  # 2 -> 1 process
    fit(*sharded, "--trainer.max_steps", "6", "--ckpt_path", "last")  # 1 -> 2 processes
    assert_adapters_close(exported(tmp_path, "run"), exported(tmp_path, "one"))
    # Without FSDP2 the optimizer shards cannot be loaded: one clear line, and the checkpoint is left as it was.
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path), "--run.name", "run", *base,
              "--trainer.max_steps", "8", "--ckpt_path", "last"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "FSDP2Strategy" in err and len(err.strip().splitlines()) == 1, err[-2000:]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before
    # One process reads the final sharded checkpoint whole (what `abspo test --ckpt_path last` evaluates): the
    # adapters it holds are the ones the run exported.
    from abspo.training.checkpoint_io import read_sharded_checkpoint

    state = read_sharded_checkpoint(folder)["state_dict"]
    for key, value in exported(tmp_path, "run").items():
        role, name = key.split("/", 1)
        ckpt_key = "bank.model." + name.replace(".weight", f".{role}.weight")
        assert torch.equal(state[ckpt_key], value), ckpt_key


def test_fsdp2_warm_started_and_anchored_to_its_start_equals_one_process(tmp_path, tiny_folder):
    """A defender started from an adapter (init_from) and anchored to it (a frozen adapter in the bank), sharded on
    2 processes with the base built on the meta device: each process fills its shards of the trainable adapter and
    of the frozen copy from the starting adapter, and the run equals one process's."""
    from abspo.weights.bank import AdapterBank, BankSpec, LoraSpec
    from tests.conftest import perturb

    bank = AdapterBank(load_base(TINY)[0], BankSpec(adapters={r: LoraSpec(r=4, alpha=8) for r in ("attacker", "defender")}))
    perturb(bank.role_parameters("defender"), seed=3, scale=0.05)
    start = bank.export("defender", tmp_path / "start")
    common = ["--run.output_root", str(tmp_path), "--model.base.name_or_path", str(tiny_folder),
              "--model.bank.adapters.defender.init_from", str(start), "--model.anchor", "initial",
              "--trainer.max_steps", "2"]
    fit_here("--config", "configs/tiny.yaml", "--run.name", "one", *common)
    fit("--config", "configs/tiny-fsdp2.yaml", "--run.name", "run", "--model.base.init_on_meta", "true", *common)
    assert_adapters_close(exported(tmp_path, "run"), exported(tmp_path, "one"))


ACCUMULATE = ["--model.algorithm.accumulate_batches", "2", "--trainer.max_steps", "4"]  # 4 batches, 2 steps a role


@pytest.fixture(scope="module")
def one_process_accumulating(tmp_path_factory):
    root = tmp_path_factory.mktemp("one-accumulating")
    fit_here("--config", "configs/tiny.yaml", "--run.output_root", str(root), "--run.name", "one", *ACCUMULATE)
    return exported(root, "one")


@pytest.mark.parametrize("config", ["tiny", "tiny-fsdp2"])
def test_accumulation_saved_mid_cycle_resumes_on_one_process_as_one_process(tmp_path, config,
                                                                            one_process_accumulating):
    """accumulate_batches 2, saved after the third batch (the gradient sums of batch 2 pending; under FSDP2 as
    shards) and resumed on 1 process: the adapters of an uninterrupted 1-process run. The pending gradients must
    travel in the checkpoint and outlive the Trainer's zero_grad before training starts: without them the
    fourth batch steps on its own gradient alone (adapters 2e-2 apart)."""
    mid = tmp_path / "mid.ckpt"
    stop = ('{"class_path": "tests.distributed_worker.SaveAndStopAfterBatch", '
            f'"init_args": {{"batch": 2, "path": "{mid}"}}}}')
    run = ["--config", f"configs/{config}.yaml", "--run.output_root", str(tmp_path), "--run.name", "run", *ACCUMULATE]
    if config == "tiny-fsdp2":
        fit(*run, "--trainer.callbacks+", stop)
        from torch.distributed.checkpoint import FileSystemReader

        saved = FileSystemReader(str(mid)).read_metadata().state_dict_metadata
        assert any(k.startswith("abspo_pending_grads.") for k in saved), "the pending gradient shards are saved"
        fit(*run, "--trainer.devices", "1", "--ckpt_path", str(mid))
    else:
        fit_here(*run, "--trainer.callbacks+", stop)
        fit_here(*run, "--ckpt_path", str(mid))
    assert_adapters_close(exported(tmp_path, "run"), one_process_accumulating)


def test_two_nodes_launched_as_documented_equal_one_process(tmp_path, one_process_run):
    """docs/strategies.md's multi-node command, with 2 "nodes" of 1 process each on this machine: two torchrun
    launchers (node ranks 0 and 1) rendezvous at one address, Lightning reads the node rank from torchrun's
    environment (trainer.num_nodes 2), and the run is the 1-process run."""
    port = str(free_port())
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", port, ABSPO,
                               "fit", "--config", "configs/tiny.yaml", "--trainer.strategy", "ddp",
                               "--trainer.devices", "1", "--trainer.num_nodes", "2",
                               "--run.output_root", str(tmp_path), "--run.name", "run"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
             for rank in (0, 1)]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), logs[0][-2000:] + logs[1][-2000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1], "node 1 holds global rank 1"
    assert_adapters_close(exported(tmp_path, "run"), one_process_run)


def test_ddp_run_resumed_on_one_process_equals_one_process_throughout(tmp_path, one_process_run):
    """2 batches: the first on 2 DDP processes, then a resume on 1 process (the games do not depend on the
    process count): the adapters of an uninterrupted 1-process run."""
    fit("--config", "configs/tiny-ddp.yaml", "--run.output_root", str(tmp_path), "--run.name", "run",
        "--trainer.max_steps", "2")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and all(".lora_" in k for k in ckpt["state_dict"]), "adapters only"
    fit_here("--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path), "--run.name", "run",
             "--ckpt_path", "last")
    assert_adapters_close(exported(tmp_path, "run"), one_process_run)
