"""The controller package's public names: one table, lazily resolved, mirrored for type checkers."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import controller

INIT = Path(controller.__file__)


def test_every_public_name_resolves_to_its_module() -> None:
    for name in controller.__all__:
        value = getattr(controller, name)
        assert value is getattr(importlib.import_module(controller._EXPORTS[name]), name)


def test_type_checking_imports_mirror_the_table() -> None:
    """The ``if TYPE_CHECKING:`` imports name exactly the table's names, from the same modules."""
    tree = ast.parse(INIT.read_text())
    guarded = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
    )
    imported = {
        alias.name: node.module
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == controller._EXPORTS


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        controller.NoSuchName  # noqa: B018
    except AttributeError as error:
        assert "NoSuchName" in str(error)
    else:
        raise AssertionError("controller.NoSuchName resolved")
