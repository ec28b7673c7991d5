"""The suite's own layout: fixtures live in conftest.py, plain helpers in tests/helpers.py, and nothing imports conftest."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_no_module_of_the_suite_imports_from_conftest():
    importers = sorted(
        path.name
        for path in TESTS.glob("*.py")
        if path.name != "conftest.py" and imported_modules(path) & {"conftest", "tests.conftest"}
    )
    assert importers == []


def test_helpers_import_nothing_from_the_rest_of_the_suite():
    assert [module for module in imported_modules(TESTS / "helpers.py") if module.startswith("tests")] == []


def test_conftest_defines_only_fixtures():
    tree = ast.parse((TESTS / "conftest.py").read_text(encoding="utf-8"))
    functions = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    plain = [node.name for node in functions if not any("fixture" in ast.unparse(decorator) for decorator in node.decorator_list)]
    assert plain == []
