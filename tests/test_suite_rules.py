"""Rules the test suite keeps about itself, checked on its own source.

``pytest.importorskip`` is for optional third-party packages (playwright, a model wheel): aimed at
our own code it turns an import error in the project into a silent skip, and the suite stays green
while whole files stop running.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
OURS = {"audio", "bench", "bot", "cogs", "tests"}


def _skipped_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "importorskip"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def test_our_own_code_is_imported_never_skipped() -> None:
    offenders = [f"{path.relative_to(TESTS.parent)}:{line} importorskip({module!r})"
                 for path in sorted(TESTS.rglob("*.py"))
                 for line, module in _skipped_imports(ast.parse(path.read_text(encoding="utf-8")))
                 if module.split(".")[0] in OURS]
    assert offenders == []


def test_the_rule_sees_an_importorskip() -> None:
    tree = ast.parse('x = pytest.importorskip("bot.loopback.server")\ny = pytest.importorskip("playwright.async_api")')
    assert _skipped_imports(tree) == [(1, "bot.loopback.server"), (2, "playwright.async_api")]
