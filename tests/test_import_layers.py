"""tools/import_layers.py: abspo's imports are acyclic and point down its layers; the checker catches both faults."""

from __future__ import annotations

from pathlib import Path

from tools.import_layers import check, import_graph, layer_of


def test_abspo_imports_have_no_cycle_and_point_down_the_layers():
    problems = check()
    assert problems == [], "\n".join(problems)


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


LAYERS = [("low", ["pkg", "pkg.low", "pkg.sub.*"]), ("high", ["pkg.high"])]


def test_the_checker_reports_a_cycle_a_back_arrow_and_an_unplaced_module(tmp_path):
    src = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "def late():\n    from pkg import high  # a function-local import is still one\n",
        "pkg/high.py": "from pkg.low import late\n",
        "pkg/sub/__init__.py": "from . import deep\n",
        "pkg/sub/deep.py": "from ..low import late\nfrom pkg.sub import NAME\n",
        "pkg/stray.py": "import pkg.sub.deep\n",
    })
    graph, missing = import_graph(src, "pkg")
    assert graph["pkg.low"] == {"pkg.high"}, "`from pkg import high` is an import of the module pkg.high"
    assert graph["pkg.sub"] == {"pkg.sub.deep"} and graph["pkg.sub.deep"] == {"pkg.low", "pkg.sub"}, \
        "relative imports resolve; a name that is no module is an import of its package"
    assert graph["pkg.stray"] == {"pkg.sub.deep"} and missing == []
    assert check(src, "pkg", LAYERS) == [
        "pkg.stray is in no layer: add it to LAYERS in tools/import_layers.py",
        "pkg.low (low) imports pkg.high (high), a higher layer",
        "import cycle: pkg.high <-> pkg.low",
        "import cycle: pkg.sub <-> pkg.sub.deep",
    ]


def test_a_clean_package_passes_and_an_import_of_nothing_is_reported(tmp_path):
    src = write_package(tmp_path, {"pkg/__init__.py": "", "pkg/low.py": "", "pkg/high.py": "from pkg import low\n"})
    assert check(src, "pkg", LAYERS) == []
    (src / "pkg" / "high.py").write_text("from pkg.gone import thing\n", encoding="utf-8")
    assert check(src, "pkg", LAYERS) == [f"pkg.high imports pkg.gone, which is no module under {src / 'pkg'}"]


def test_a_package_entry_names_its_modules_and_nothing_that_merely_shares_its_prefix():
    assert layer_of("pkg.sub", LAYERS) == layer_of("pkg.sub.deep", LAYERS) == 0
    assert layer_of("pkg.subway", LAYERS) is None and layer_of("pkg.lower", LAYERS) is None
