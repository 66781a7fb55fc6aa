"""The type stubs declare exactly what the native module has."""

import ast
import pathlib

import soramai
from soramai import _native

STUB = pathlib.Path(soramai.__file__).with_name("_native.pyi")


def declared(class_name: str) -> set[str]:
    tree = ast.parse(STUB.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    raise AssertionError(f"{class_name} is not in the stubs")


def test_classes_match_their_stubs():
    for name in ("Platform", "Session", "TokenStream"):
        cls = getattr(_native, name)
        public = {n for n in vars(cls) if not n.startswith("_") or n in ("__iter__", "__next__")}
        stub = declared(name) - {"__new__"}
        assert public == stub, (name, public ^ stub)


def test_exports_are_declared():
    text = STUB.read_text()
    for name in soramai.__all__:
        if name in ("Platform", "default_runner"):
            continue  # defined in soramai/__init__.py itself
        assert f"class {name}" in text or f"{name}:" in text, name
