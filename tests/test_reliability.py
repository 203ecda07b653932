"""A run survives kill -9 at any moment, SIGTERM and Ctrl-C, non-finite updates and a judge that labels nothing.

The kill and signal tests run the real ``abspo fit`` (tiny model, 3 batches) in subprocesses: one uninterrupted,
then runs killed with SIGKILL mid-rollout, mid-update and half-way through writing a checkpoint
(``tests/fault_worker.py`` injects the kill), and runs stopped by SIGTERM and SIGINT, each resumed with
``--ckpt_path last``. Every resumed run must end with the uninterrupted run's adapters, and ``last.ckpt`` must be
readable after every kill. The runs of a stage go concurrently (one thread each) to keep the file fast.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from abspo.judges import Judge, Verdict

ROOT = Path(__file__).resolve().parents[1]
BATCHES = 3
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}  # same math in every run


def fit_command(root: Path, *extra: str, point: str = "none", n: int = 0) -> list[str]:
    return [sys.executable, "-m", "tests.fault_worker", point, str(n), "--", "fit", "--config", "configs/tiny.yaml",
            "--run.output_root", str(root), "--run.max_batches", str(BATCHES), *extra]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def last_checkpoint(root: Path) -> dict:
    return torch.load(root / "tiny" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def adapters(checkpoint: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in checkpoint["state_dict"].items() if "lora_" in k}


def assert_same_adapters(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    """The adapters of an uninterrupted 3-batch run."""
    root = tmp_path_factory.mktemp("straight")
    done = run(fit_command(root))
    assert done.returncode == 0, done.stderr[-2000:]
    checkpoint = last_checkpoint(root)
    assert checkpoint["global_step"] == 2 * BATCHES
    return adapters(checkpoint)


# (kill point, its N-th occurrence, global step of the last complete checkpoint) -- 2 optimizer steps and one
# checkpoint per batch; generate runs twice per batch (attacker, defender), the gradient pass twice per batch.
KILLS = {"mid-rollout": ("rollout", 3, 2),  # batch 1's attacker turns
         "mid-update": ("update", 4, 2),  # batch 1's defender update, after its attacker stepped
         "mid-checkpoint-save": ("save", 2, 2)}  # half of batch 1's checkpoint on disk


@pytest.mark.slow
def test_kill_9_at_any_moment_then_resume_equals_the_uninterrupted_run(straight, tmp_path):
    roots = {name: tmp_path / name.replace(" ", "_") for name in KILLS}
    with ThreadPoolExecutor(len(KILLS)) as pool:
        killed = dict(zip(KILLS, pool.map(lambda name: run(fit_command(roots[name], point=KILLS[name][0],
                                                                       n=KILLS[name][1])), KILLS)))
    for name, proc in killed.items():
        assert proc.returncode == -signal.SIGKILL, f"{name}: {proc.stderr[-2000:]}"
        checkpoint = last_checkpoint(roots[name])  # readable: the kill never leaves it half-written
        assert checkpoint["global_step"] == KILLS[name][2], name
    with ThreadPoolExecutor(len(KILLS)) as pool:
        resumed = dict(zip(KILLS, pool.map(lambda name: run(fit_command(roots[name], "--ckpt_path", "last")), KILLS)))
    for name, proc in resumed.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
        checkpoint = last_checkpoint(roots[name])
        assert checkpoint["global_step"] == 2 * BATCHES, name
        assert_same_adapters(adapters(checkpoint), straight)
        assert not list((roots[name] / "tiny" / "checkpoints").glob(".*.tmp")), "no temporary file left behind"


def stop_after_first_batch(cmd: list[str], signum: int) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``cmd``, send ``signum`` once its first progress line is out; (the ended process, its stdout lines)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("batch 1/"):
            proc.send_signal(signum)
    proc.wait(timeout=300)
    reader.join(timeout=10)
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), "".join(err)), lines


SIGNALS = {"SIGTERM": (signal.SIGTERM, 143), "SIGINT": (signal.SIGINT, 130)}  # signal, exit status


@pytest.mark.slow
def test_a_signal_finishes_the_batch_saves_and_exits_non_zero_with_the_resume_command(straight, tmp_path):
    # No periodic checkpoint: whatever last.ckpt holds, the signal's stop wrote it. Both signals' runs go
    # concurrently, then both resumes.
    args = ("--run.checkpoint_every_n_steps", "100", "--trainer.enable_progress_bar", "true")
    roots = {name: tmp_path / name for name in SIGNALS}
    with ThreadPoolExecutor(len(SIGNALS)) as pool:
        stopped = dict(zip(SIGNALS, pool.map(
            lambda name: stop_after_first_batch(fit_command(roots[name], *args), SIGNALS[name][0]), SIGNALS)))
    resumes = {}
    for name, (proc, lines) in stopped.items():
        assert proc.returncode == SIGNALS[name][1], f"{name}: {proc.stderr[-2000:]}"
        assert lines and lines[0].startswith("batch 1/3 | step 2 | r_att "), "plain progress lines when not a terminal"
        assert "s/batch" in lines[0]
        resume = proc.stderr.strip().splitlines()[-1].strip()
        assert resume.startswith("abspo fit --config configs/tiny.yaml") and resume.endswith("--ckpt_path last"), name
        saved = last_checkpoint(roots[name])
        assert saved["global_step"] in (2, 4) and saved["global_step"] < 2 * BATCHES, f"{name}: stopped after a batch"
        resumes[name] = [sys.executable, "-m", "abspo.cli", *shlex.split(resume)[1:]]
    with ThreadPoolExecutor(len(SIGNALS)) as pool:
        resumed = dict(zip(SIGNALS, pool.map(lambda name: run(resumes[name]), SIGNALS)))
    for name, proc in resumed.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
        assert_same_adapters(adapters(last_checkpoint(roots[name])), straight)


# -- guarded updates (in this process) ----------------------------------------------------------------------------


class Abstaining(Judge):
    """A judge that decides nothing, like a remote judge whose server is down."""

    def judge_batch(self, prompts, responses, seed_harmful):
        return [Verdict(None, None, None) for _ in prompts]


def tiny_fit(tmp_path: Path, *extra: str):
    from abspo.cli import cli_main

    return cli_main(["fit", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path), *extra])


def test_non_finite_updates_are_skipped_then_stop_the_run_with_the_weights_from_before(tmp_path, monkeypatch):
    """From the 3rd update on (batch 1, attacker first) every loss is NaN: each is skipped (weights and optimizer
    state untouched, <role>/skipped_nonfinite logged); the 2nd bad update in a row of one adapter stops the run,
    and last.ckpt holds the adapters from before the first bad update."""
    from abspo.rl import algorithms
    from abspo.core.errors import TrainingStopped
    from abspo.training.update import PolicyUpdate

    calls, before, seen = [0], {}, []  # objective calls (one per update here), adapters before the first NaN
    objective = algorithms.objective

    def poisoned(*args, **kwargs):
        loss, clip = objective(*args, **kwargs)
        calls[0] += 1
        return loss * float("nan") if calls[0] > 2 else loss, clip

    update = PolicyUpdate.update

    def spy(self, adapter, roles, exchanges, opt, sched):
        if calls[0] == 2 and not before:  # the first poisoned update is next
            module = self.module
            before.update({n: p.detach().clone() for n, p in module.named_parameters() if module.bank.owner_of(n)})
        stats = update(self, adapter, roles, exchanges, opt, sched)
        seen.append(stats)
        return stats

    monkeypatch.setattr(algorithms, "objective", poisoned)
    monkeypatch.setattr(PolicyUpdate, "update", spy)
    with pytest.raises(TrainingStopped, match="2 consecutive updates of adapter 'attacker'.*non-finite"):
        tiny_fit(tmp_path, "--run.max_batches", "5", "--model.guards.max_consecutive_nonfinite", "2")
    assert [s.get("attacker/skipped_nonfinite", s.get("defender/skipped_nonfinite")) for s in seen] == [0, 0, 1, 1, 1, 1]
    checkpoint = last_checkpoint(tmp_path)
    assert checkpoint["global_step"] == 6, "the skipped steps count as steps: the schedule stays aligned"
    assert_same_adapters({k: v for k, v in checkpoint["state_dict"].items() if k in before}, before)
    for opt_state in checkpoint["optimizer_states"]:  # one good update each (batch 0), then only skipped ones
        assert all(int(s["step"]) == 1 for s in opt_state["state"].values()), "AdamW left the parameters alone"


def test_a_judge_that_labels_nothing_skips_the_update_and_a_window_of_it_stops_the_run(tmp_path):
    from abspo.core.errors import TrainingStopped

    judge = "{class_path: tests.test_reliability.Abstaining}"
    with pytest.raises(TrainingStopped, match=r"unlabelled \(100% > model.guards.max_unlabelled_share 80%\)"):
        tiny_fit(tmp_path, "--model.judge", judge, "--run.max_batches", "5", "--model.guards.unlabelled_window", "2")
    checkpoint = last_checkpoint(tmp_path)
    assert checkpoint["SeedDataModule"]["batches_served"] == 2, "stopped after the window's 2 batches"


SERVERS: dict[str, object] = {}  # url -> a running tests.judges.test_remote.Server
DEAD: set[str] = set()  # urls of servers that have died


class StopServer(Callback):
    """Kills the judge server at ``url`` after ``after_batches`` batches: it stops listening, and connections the
    client kept open (keep-alive) get no answer any more."""

    def __init__(self, url: str, after_batches: int = 1):
        self.url, self.after_batches = url, after_batches

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch.index + 1 == self.after_batches:
            DEAD.add(self.url)
            SERVERS[self.url].close()


@pytest.mark.slow
def test_a_remote_judge_whose_server_dies_mid_run_is_counted_unlabelled_and_stops_the_run(tmp_path):
    from tests.judges.test_remote import Server, wildguard_ok

    from abspo.core.errors import TrainingStopped

    def answers_until_dead(n: int, body: dict):
        if server.url in DEAD:
            return 200, b"{}", 5.0  # a hung server: the client's 0.5 s timeout ends the request
        return wildguard_ok(n, body)

    server = Server(answers_until_dead)
    SERVERS[server.url] = server
    judge = ("{class_path: abspo.judges.RemoteJudge, init_args: {base_url: '" + server.url + "', model: guard, "
             "timeout_s: 0.5, retries: 0}}")
    stop = "[{class_path: tests.test_reliability.StopServer, init_args: {url: '" + server.url + "'}}]"
    try:
        with pytest.raises(TrainingStopped, match=r"unlabelled \(100% > model.guards.max_unlabelled_share 80%\)"):
            tiny_fit(tmp_path, "--model.judge", judge, "--trainer.callbacks", stop, "--run.max_batches", "6",
                     "--model.guards.unlabelled_window", "2")
    finally:
        server.close()
    assert server.hits > 0, "the first batch was judged by the live server"
    checkpoint = last_checkpoint(tmp_path)
    assert checkpoint["SeedDataModule"]["batches_served"] == 3, "batches 2 and 3 found the server dead: stopped"
    assert checkpoint["global_step"] > 2, "training went on through the dead server's first batch"


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    import errno

    import abspo.training.checkpoint_io
    from abspo.cli import main

    save, calls = torch.save, [0]

    def disk_full_on_the_second_save(obj, fh, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            fh.write(b"x" * 1000)  # part of it made it to disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, fh, *args, **kwargs)

    monkeypatch.setattr(abspo.training.checkpoint_io.torch, "save", disk_full_on_the_second_save)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path), "--run.max_batches", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("abspo: error: ") and "last.ckpt: no space left" in err[-1]
    assert "Traceback" not in "\n".join(err)
    monkeypatch.setattr(abspo.training.checkpoint_io.torch, "save", save)
    assert last_checkpoint(tmp_path)["global_step"] == 2, "the first batch's checkpoint, whole"
    assert not list((tmp_path / "tiny" / "checkpoints").glob(".*.tmp"))
