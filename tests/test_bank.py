"""AdapterBank: role routing, the anchor, per-role parameters, and PEFT export."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from abspo.weights.bank import AdapterBank, BankSpec, LoraSpec
from abspo.core.errors import ConfigError
from abspo.weights.models import load_base
from tests.conftest import TINY, perturb, tiny_bank

IDS = torch.tensor([[5, 17, 256, 1024, 7, 99]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def grads_flags(bank: AdapterBank) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in bank.model.named_parameters()}


def test_role_switch_and_anchor_never_touch_requires_grad():
    bank, _ = tiny_bank()
    before = grads_flags(bank)
    assert all(before[n] for n, p in bank.model.named_parameters() if bank._adapter_of(n)), "adapters train"
    assert not any(p.requires_grad for _, p in bank.base_parameters()), "base is frozen"
    for role in ("attacker", "defender", "attacker"):
        with bank.role(role):
            with bank.anchor():
                assert grads_flags(bank) == before
            assert grads_flags(bank) == before
    assert grads_flags(bank) == before


def test_role_parameters_are_selected_by_name_and_disjoint():
    bank, _ = tiny_bank()
    att, dfn = bank.role_parameters("attacker"), bank.role_parameters("defender")
    assert len(att) == len(dfn) > 0
    assert not {id(p) for p in att} & {id(p) for p in dfn}
    # still selected after a role switch (the PEFT trap: filtering by requires_grad would lose one role)
    with bank.role("defender"):
        assert len(bank.role_parameters("attacker")) == len(att)


def test_fresh_adapters_equal_the_anchor_and_roles_route_to_their_own_adapter():
    bank, _ = tiny_bank()
    with bank.anchor() as m:
        anchor = logits(m)
    with bank.role("attacker") as m:
        assert torch.equal(logits(m), anchor), "LoRA B starts at 0: a fresh role is the anchor"
    perturb(bank.role_parameters("attacker"), seed=1)
    with bank.role("attacker") as m:
        attacker = logits(m)
    with bank.role("defender") as m:
        defender = logits(m)
    with bank.anchor() as m:
        assert torch.equal(logits(m), anchor), "anchor ignores adapters"
    assert not torch.allclose(attacker, anchor)
    assert torch.equal(defender, anchor), "defender does not see the attacker's weights"


def test_routing_is_restored_after_a_context():
    bank, _ = tiny_bank()
    perturb(bank.role_parameters("attacker"), seed=1)
    perturb(bank.role_parameters("defender"), seed=2)
    with bank.role("attacker") as m:
        a = logits(m)
        with bank.role("defender"):
            pass
        with bank.anchor():
            pass
        assert torch.equal(logits(m), a)


def test_shared_adapter_baseline_maps_both_roles_to_one_parameter_set():
    bank, _ = tiny_bank(shared=True)
    assert [id(p) for p in bank.role_parameters("attacker")] == [id(p) for p in bank.role_parameters("defender")]
    perturb(bank.role_parameters("attacker"), seed=3)
    with bank.role("attacker") as m:
        a = logits(m)
    with bank.role("defender") as m:
        assert torch.equal(logits(m), a)


@pytest.mark.parametrize("role", ["attacker", "defender"])
def test_export_loads_with_peft_and_reproduces_role_logits(tmp_path, role):
    bank, _ = tiny_bank()
    perturb(bank.role_parameters("attacker"), seed=1)
    perturb(bank.role_parameters("defender"), seed=2)
    with bank.role(role) as m:
        expected = logits(m)
    folder = bank.export(role, tmp_path / role)
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "adapter_config.json").is_file()
    fresh, _ = load_base(TINY)
    loaded = PeftModel.from_pretrained(fresh, folder)
    torch.testing.assert_close(logits(loaded), expected, rtol=0, atol=1e-5)


def test_export_replaces_an_earlier_export_atomically(tmp_path):
    bank, _ = tiny_bank()
    bank.export("attacker", tmp_path / "attacker")
    perturb(bank.role_parameters("attacker"), seed=4)
    bank.export("attacker", tmp_path / "attacker")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attacker"], "no temporary folders left behind"


def test_unknown_target_module_names_the_key_and_the_fix(tiny_base):
    base, _ = tiny_base
    spec = BankSpec(adapters={"attacker": LoraSpec(target_modules=["q_proj", "qkv"]), "defender": LoraSpec()})
    with pytest.raises(ConfigError) as err:
        AdapterBank(base, spec)
    message = str(err.value)
    assert "model.bank.adapters.attacker.target_modules" in message and "'qkv'" in message and "q_proj" in message


@pytest.mark.parametrize(
    "roles, key",
    [({"attacker": "attacker", "defender": "defender", "judge": "attacker"}, "model.bank.roles.judge"),
     ({"attacker": "attacker", "defender": "nope"}, "model.bank.roles.defender"),
     ({"attacker": "attacker"}, "model.bank.roles")],
)
def test_bad_role_mappings_are_config_errors(roles, key):
    spec = BankSpec(adapters={"attacker": LoraSpec(), "defender": LoraSpec()}, roles=roles)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        spec.validate()


def test_export_recovers_from_a_leftover_of_a_killed_export(tmp_path):
    bank, _ = tiny_bank()
    target = tmp_path / "adapters" / "defender"
    bank.export("defender", target)
    leftover = tmp_path / "adapters" / ".defender.old"  # an export killed between its two renames leaves this
    leftover.mkdir()
    (leftover / "adapter_model.safetensors").write_bytes(b"stale")
    bank.export("defender", target)
    assert (target / "adapter_model.safetensors").is_file() and not leftover.exists()


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_exports_get_the_permissions_the_umask_gives_ordinary_files(tmp_path, mask):
    """Shared clusters: a teammate must be able to read an export (mkdtemp alone would make it 0700)."""
    import os
    import stat

    bank, _ = tiny_bank()
    old = os.umask(mask)
    try:
        folder = bank.export("defender", tmp_path / "defender")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f.name
