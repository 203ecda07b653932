"""Size budgets that keep one concept per module: no module of src/abspo over 500 lines, no function body over 60.

The numbers are the design rule (docs/design.md), not a style preference: SelfPlayModule grew to 1,031 lines and
46 methods before it was split, and every concept it held was hard to find. A module that must grow past the
budget should be split along a concept, not have the budget raised.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "abspo"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def function_body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body, its docstring excluded."""
    body = node.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
        and isinstance(body[0].value.value, str)
    if has_doc and len(body) == 1:
        return 0
    return node.end_lineno - body[1 if has_doc else 0].lineno + 1


def oversized(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            found.append(f"{path.relative_to(root)}: {len(text.splitlines())} lines > {MAX_MODULE_LINES}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and function_body_lines(node) > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {function_body_lines(node)} lines "
                             f"> {MAX_FUNCTION_LINES}")
    return found


def test_no_module_or_function_is_over_its_budget():
    assert oversized(SRC) == []


def test_the_budget_sees_a_long_function_and_ignores_its_docstring(tmp_path):
    doc = '    """' + "\n".join(["x"] * 100) + '"""\n'
    body = "".join(f"    a{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "ok.py").write_text("def f():\n" + doc + body, encoding="utf-8")
    assert oversized(tmp_path) == []
    (tmp_path / "long.py").write_text("def g():\n" + body + "    return 0\n", encoding="utf-8")
    (tmp_path / "big.py").write_text("\n".join(["x = 1"] * (MAX_MODULE_LINES + 1)), encoding="utf-8")
    assert oversized(tmp_path) == [f"big.py: {MAX_MODULE_LINES + 1} lines > {MAX_MODULE_LINES}",
                                   f"long.py:1 g: {MAX_FUNCTION_LINES + 1} lines > {MAX_FUNCTION_LINES}"]
