"""Shared fixtures: the tiny random-init Qwen2 base (seconds per step) and a fast real judge."""

from __future__ import annotations

import pytest
import torch

from abspo.weights.bank import AdapterBank, BankSpec, LoraSpec
from abspo.weights.models import BaseModel, load_base

TINY = BaseModel(name_or_path="tiny-qwen2", dtype="float32")


@pytest.fixture
def tiny_base():
    return load_base(TINY)


@pytest.fixture(scope="session")
def judge():
    """The offline HeuristicJudge (its MiniLM loaded once per session)."""
    from abspo.judges import HeuristicJudge

    return HeuristicJudge()


@pytest.fixture(scope="session")
def seeds():
    """The default seed stream (the data kit's seeds, 8 per batch)."""
    from abspo.game.seeds import SeedDataModule

    data = SeedDataModule(batch_size=8)
    data.setup()
    return data.stream


def tiny_bank(shared: bool = False, r: int = 4) -> tuple[AdapterBank, object]:
    base, tok = load_base(TINY)
    if shared:
        spec = BankSpec(adapters={"shared": LoraSpec(r=r, alpha=2 * r)}, roles={"attacker": "shared", "defender": "shared"})
    else:
        spec = BankSpec(adapters={"attacker": LoraSpec(r=r, alpha=2 * r), "defender": LoraSpec(r=r, alpha=2 * r)})
    return AdapterBank(base, spec), tok


def perturb(params, seed: int, scale: float = 0.5) -> None:
    """Give adapter weights non-zero values (LoRA B starts at 0, which makes every role equal the anchor)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(autouse=True, scope="session")
def _plain_argv():
    """LightningCLI(args=...) warns when sys.argv also holds pytest's own arguments (session scope, so that
    module-scoped fixtures that run the CLI see it too)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["abspo"])
        yield
