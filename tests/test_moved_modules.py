"""abspo.core.moved_modules: the flat import paths from before the layer packages still import, for one release."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from abspo.core.moved_modules import MOVED


def test_every_old_path_names_a_module_that_exists_and_no_old_path_is_still_a_file():
    for old, new in MOVED.items():
        assert importlib.util.find_spec(new) is not None, new
        assert not any((p / (old.split(".")[-1] + ".py")).exists()
                       for p in map(__import__("pathlib").Path, importlib.import_module("abspo").__path__)), old


@pytest.mark.parametrize("old", ["abspo.bank", "abspo.module", "abspo.data"])
def test_an_old_path_is_the_new_module_itself_with_a_deprecation_warning(old):
    # A fresh interpreter: in this one the old path may already sit in sys.modules without a new warning.
    code = (f"import warnings; warnings.simplefilter('error')\n"
            f"try:\n    import {old}\nexcept DeprecationWarning as e:\n    print('warned:', e)\n"
            f"warnings.simplefilter('ignore')\nimport importlib, {old}\n"
            f"print(importlib.import_module({old!r}) is importlib.import_module({MOVED[old]!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f"warned: {old} moved to {MOVED[old]}" in out
    assert out.strip().endswith("True")


def test_a_class_from_an_old_path_is_the_same_class():
    with pytest.warns(DeprecationWarning):
        from abspo.game import Exchange
    from abspo.game.rules import Exchange as new
    assert Exchange is new
    with pytest.raises(AttributeError):
        importlib.import_module("abspo.game").no_such_name
