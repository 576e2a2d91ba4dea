"""The library imports nothing from the layers above it (DESIGN.md: pipeline/ > stages/ > ogpo/).

Every module under ``ogpo/`` is parsed with ``ast`` (nothing is imported or run): ``import x``, ``from x import
y`` (at any depth, inside functions too) and ``importlib.import_module("x")`` / ``__import__("x")`` with a
literal name must not name ``pipeline`` or ``stages``; nor the clients those layers own ("ogpo/ knows nothing of
Prefect, DVC, S3"; "S3 access lives in pipeline/ only").
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "ogpo"
UPPER = ("pipeline", "stages")
CLIENTS = ("boto3", "botocore", "aiobotocore", "s3fs", "dvc", "prefect")


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def upward_imports(root: Path = LIBRARY, names: tuple[str, ...] = UPPER) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, module in _imported(tree):
            if module.split(".")[0] in names:
                bad.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
    return bad


def test_library_imports_nothing_from_stages_or_pipeline():
    assert len(list(LIBRARY.rglob("*.py"))) > 20  # the walk sees the whole library
    assert upward_imports() == []


def test_library_uses_no_object_store_or_orchestration_client():
    assert upward_imports(names=CLIENTS) == []


def test_the_check_catches_each_form(tmp_path):
    lib = tmp_path / "ogpo"
    (lib / "sub").mkdir(parents=True)
    (lib / "ok.py").write_text("import ogpo.data\nfrom . import stages\nfrom .pipeline import x\nimport pipelines\n")
    (lib / "sub" / "bad.py").write_text(
        "def f():\n    from pipeline.pull import load_policy\n"
        "import stages.ingest as s\n"
        "import importlib\nimportlib.import_module('pipeline.storage')\n__import__('stages')\n"
    )
    assert sorted(upward_imports(lib)) == [
        "ogpo/sub/bad.py:2 imports pipeline.pull",
        "ogpo/sub/bad.py:3 imports stages.ingest",
        "ogpo/sub/bad.py:5 imports pipeline.storage",
        "ogpo/sub/bad.py:6 imports stages",
    ]
