"""Check abspo's import layering: no import cycles, and no import from a lower layer up to a higher one.

    python tools/import_layers.py            # report; exit status 1 on any violation
    python tools/import_layers.py --graph    # also print every package-internal import

A module may import from its own layer and the layers below it, never above: the foundation knows nothing of
the game, the game nothing of training, and only the CLI knows the CLI. That keeps each layer testable and
reusable without the ones above it (an evaluation that imports the CLI cannot run without parsing a command
line; a bank that sharding imports back cannot be understood alone). :data:`LAYERS` is the declared map, and
so the documentation of the architecture: a new module must be placed in it, or this check fails.

Every ``import`` statement counts, at any depth (a function-local import is still a dependency, only a later
one), ``if TYPE_CHECKING:`` blocks included. Imports by string (``importlib.import_module``, class paths in
configs) are not seen: they are the plug-in points, chosen by the user, not the package's own structure.
tests/test_import_layers.py runs :func:`check` on src/abspo.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "abspo"

# From the foundation up to the command line. An entry names one module, or with ``.*`` a package and everything
# in it. A module named here that does not exist (yet, or any more) is fine; a module that exists and is named
# nowhere fails the check.
LAYERS: list[tuple[str, list[str]]] = [
    # Plain helpers with no notion of models or games: errors, atomic files, hashes, JSON lines, timing, the run
    # folder's layout, config files and the settings dataclasses, a function as a command.
    ("foundation", ["abspo", "abspo.core.*"]),
    # The RL maths on tensors and token ids: losses, log-probabilities, batching, sampling, degeneracy, diversity.
    ("rl_math", ["abspo.rl.*"]),
    # Models and their weights: the base, adapter folders and bank, the full policy, modes, sharding, processes.
    ("models", ["abspo.weights.*"]),
    # The game: its rules (turns and formats), seed data, the rewards, and the judges that score an exchange.
    ("game", ["abspo.game.*", "abspo.judges.*"]),
    # Measuring players on fixed prompts: safety reports, cross-play, mode comparisons, retention tasks. Below
    # training: it needs models and the game only, and training's callbacks run it (a comparison trains through
    # `abspo fit` child processes, never an import).
    ("evaluation", ["abspo.evaluation.*"]),
    # Training: the Lightning module and what it is made of, its callbacks and strategies.
    ("training", ["abspo.training.*", "abspo.callbacks.*", "abspo.strategies"]),
    # The `abspo` command: parses arguments, dispatches to the layers below, prints.
    ("cli", ["abspo.cli"]),
]


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``root`` (a ``src`` folder): dotted name -> file."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterable[tuple[str, str | None]]:
    """(module, name or None) for every import in ``tree``, relative imports made absolute."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                yield base, alias.name


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> tuple[dict[str, set[str]], list[str]]:
    """The package-internal imports: module -> the modules it imports, and the imports of modules that do not
    exist. ``from p import x`` is an import of ``p.x`` when that is a module, else of ``p``."""
    files = module_files(root, package)
    graph: dict[str, set[str]] = {m: set() for m in files}
    missing = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for base, name in imported_names(tree, module, path.name == "__init__.py"):
            if base != package and not base.startswith(package + "."):
                continue
            target = f"{base}.{name}" if name and f"{base}.{name}" in files else base
            if target in files:
                graph[module].add(target)
            else:
                missing.append(f"{module} imports {target}, which is no module under {root / package}")
    return graph, missing


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module, or a module importing itself
    (Tarjan's algorithm, iterative so that a deep chain cannot overflow the stack)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return sorted(found)


def layer_of(module: str, layers: Sequence[tuple[str, list[str]]]) -> int | None:
    """The index of ``module``'s layer (the most specific entry naming it), or None when no entry does."""
    best, best_length = None, -1
    for i, (_, entries) in enumerate(layers):
        for entry in entries:
            stem = entry.removesuffix(".*")
            named = module == stem or (entry.endswith(".*") and module.startswith(stem + "."))
            if named and len(stem) > best_length:
                best, best_length = i, len(stem)
    return best


def check(root: Path = ROOT, package: str = PACKAGE,
          layers: Sequence[tuple[str, list[str]]] = LAYERS) -> list[str]:
    """Every violation of ``package``'s layering, one line each: an empty list means the imports are clean."""
    graph, problems = import_graph(root, package)
    where = {m: layer_of(m, layers) for m in graph}
    problems += [f"{m} is in no layer: add it to LAYERS in tools/import_layers.py" for m, i in where.items() if i is None]
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            low, high = where[module], where[target]
            if low is not None and high is not None and low < high:
                problems.append(f"{module} ({layers[low][0]}) imports {target} ({layers[high][0]}), a higher layer")
    problems += ["import cycle: " + " <-> ".join(c) for c in cycles(graph)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", action="store_true", help="print every package-internal import first")
    args = parser.parse_args(argv)
    if args.graph:
        graph, _ = import_graph()
        for module, targets in sorted(graph.items()):
            print(f"{module}: {', '.join(sorted(targets)) or '-'}")
    problems = check()
    modules = len(module_files(ROOT, PACKAGE))
    for line in problems:
        print(line)
    print(f"{modules} modules in {len(LAYERS)} layers: " + (f"{len(problems)} violation(s)" if problems else "clean"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
