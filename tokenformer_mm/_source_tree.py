"""Importing the towers from a source checkout, where they live beside this package.

``pyproject.toml`` installs ``vision/`` as ``tokenformer_mm.vision`` and ``language/`` as
``tokenformer_mm.language``: a wheel holds them inside the package, and an editable install maps
them with setuptools' own finder. When Python imports ``tokenformer_mm`` straight from a
checkout instead (the repository root on ``sys.path``: a script or ``python -c`` run there, with
or without an install), this finder maps the same two names to the same folders. Nothing else
in the checkout becomes importable through it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

TOWER_FOLDERS = {"tokenformer_mm.vision": "vision", "tokenformer_mm.language": "language"}


class SourceTreeTowers(importlib.abc.MetaPathFinder):
    """Finds ``tokenformer_mm.vision`` / ``.language`` in the checkout at ``root``.

    Only for the ``tokenformer_mm`` of that same checkout (``path`` is its ``__path__``): with
    two checkouts, or an editable install of another, each core gets its own towers.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        folder = TOWER_FOLDERS.get(fullname)
        if folder is None or path is None or str(self.root / "tokenformer_mm") not in list(path):
            return None
        init = self.root / folder / "__init__.py"
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(init.parent)]
        )


def _map_towers() -> None:
    package = Path(__file__).resolve().parent
    root = package.parent
    installed = (package / "vision").is_dir()  # a wheel: the towers are inside the package
    checkout = all((root / folder / "__init__.py").is_file() for folder in TOWER_FOLDERS.values())
    mapped = any(
        isinstance(finder, SourceTreeTowers) and finder.root == root for finder in sys.meta_path
    )
    if checkout and not installed and not mapped:  # first: before any editable install's finder
        sys.meta_path.insert(0, SourceTreeTowers(root))


_map_towers()
