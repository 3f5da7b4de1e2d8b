"""The package's shape: one import namespace, the import rules of docs/design.md, the wheel."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .engine_utils import ROOT

# Where each installed package's source lives in the repository (pyproject's package-dir).
SOURCE_ROOTS = {
    "tokenformer_mm": ROOT / "tokenformer_mm",
    "tokenformer_mm.vision": ROOT / "vision",
    "tokenformer_mm.language": ROOT / "language",
}
TOWERS = ("tokenformer_mm.vision", "tokenformer_mm.language")
INTEGRATION = "tokenformer_mm.clip"  # the one package that joins the towers
# The model core: readable on its own, built on torch (and timm's small layers) alone.
MODEL_CORE = {
    f"tokenformer_mm.{name}"
    for name in (
        "pattention",
        "parametrization",
        "fused_pattention",
        "theta",
        "block",
        "rotary",
        "growth",
        "initialization",
    )
} | {
    f"tokenformer_mm.growth.{path.stem}"
    for path in (ROOT / "tokenformer_mm" / "growth").glob("*.py")
    if path.stem != "__init__"
}


def library_modules() -> dict[str, Path]:
    """Every installed module name and its source file."""
    modules = {}
    for package, folder in SOURCE_ROOTS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "tokenformer_mm" and parts[0] in ("vision", "language"):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


MODULES = library_modules()


def imports_of(name: str, path: Path, everywhere: bool = False) -> set[str]:
    """Absolute names of what a module imports at import time (``everywhere``: in functions too).

    ``from package import name`` counts as an import of ``package.name`` when that is a module.
    """
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    # At import time: the module's statements, and the imports of its top-level try blocks (a
    # missing extra's guard, the towers' import in the package root).
    top = [*tree.body, *(n for t in tree.body if isinstance(t, ast.Try) for n in t.body)]
    for node in ast.walk(tree) if everywhere else top:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            prefix = base[: len(base) - node.level + 1] if node.level else []
            module = ".".join([*prefix, *([node.module] if node.module else [])])
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                found.add(submodule if submodule in MODULES else module)
    return found


IMPORTS = {name: imports_of(name, path) for name, path in MODULES.items()}


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_installed_modules_are_one_namespace():
    assert all(name.split(".")[0] == "tokenformer_mm" for name in MODULES)
    assert {"tokenformer_mm.vision.tokenformer_vit", "tokenformer_mm.language.model"} <= set(
        MODULES
    )


def test_library_never_imports_generic_names_scripts_or_tests():
    forbidden = ("vision", "language", "scripts", "tests")
    offenders = {
        name: sorted(
            i for i in imports_of(name, path, everywhere=True) if i.split(".")[0] in forbidden
        )
        for name, path in MODULES.items()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_core_imports_no_tower():
    """Only the package's own ``__init__`` reaches a tower: the timm model definitions."""
    core = [
        name
        for name in MODULES
        if name != "tokenformer_mm" and not any(_inside(name, p) for p in (*TOWERS, INTEGRATION))
    ]
    offenders = {
        name: sorted(i for i in IMPORTS[name] if any(_inside(i, p) for p in (*TOWERS, INTEGRATION)))
        for name in core
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    tower_imports = {i for i in IMPORTS["tokenformer_mm"] if any(_inside(i, t) for t in TOWERS)}
    assert tower_imports == {"tokenformer_mm.vision.registry"}


def test_towers_never_import_each_other_or_the_integration():
    for tower in TOWERS:
        others = [t for t in (*TOWERS, INTEGRATION) if t != tower]
        for name in (m for m in MODULES if _inside(m, tower)):
            assert not [i for i in IMPORTS[name] if any(_inside(i, o) for o in others)], name


def test_the_model_core_builds_on_torch_alone():
    allowed_third_party = ("torch", "timm.layers")
    for name in MODEL_CORE:
        for imported in IMPORTS[name]:
            root = imported.split(".")[0]
            if root == "tokenformer_mm":
                assert imported in MODEL_CORE, f"{name} imports {imported}"
            elif root not in sys.stdlib_module_names and root != "__future__":
                allowed = any(_inside(imported, p) for p in allowed_third_party)
                assert allowed, f"{name} imports {imported}"


def _modules_run_by(importer: str, imported: str) -> set[str]:
    """``imported`` and the package ``__init__`` files importing it runs first.

    Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``; those the importer sits in
    are running already, so only the others can close a cycle.
    """
    parts = imported.split(".")
    above = {".".join(parts[:i]) for i in range(1, len(parts))}
    return {imported} | {p for p in above if p in MODULES and not _inside(importer, p)}


# The sizes docs/design.md sets: a file past them has more than one job (the "~" is the slack).
SIZE_LIMITS = {"tokenformer_mm": 320, "vision": 450, "language": 450, "scripts": 400}


def test_no_file_outgrows_the_size_its_folder_allows():
    too_long = []
    for folder, limit in SIZE_LIMITS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = len(path.read_text().splitlines())
            if lines > limit:
                too_long.append(f"{path.relative_to(ROOT)}: {lines} lines (limit {limit})")
    assert not too_long, "split by job: " + "; ".join(too_long)


def test_no_import_cycles():
    """Cycles through a package's ``__init__`` count too (``a -> b.c`` runs ``b/__init__``)."""
    graph = {
        name: {m for i in imports if i in MODULES for m in _modules_run_by(name, i)}
        for name, imports in IMPORTS.items()
    }
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name not in done:
            for imported in sorted(graph[name]):
                visit(imported, [*path, name])
            done.add(name)

    for name in sorted(graph):
        visit(name, [])


def _python(code: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_importing_the_core_loads_no_data_pipeline_and_registers_timm(tmp_path):
    code = (
        "import sys, timm, tokenformer_mm\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'webdataset', 'braceexpand', 'vision', 'language'} or "
        "m.endswith(('.data', '.pairs', '.sources')) and m.startswith('tokenformer_mm')))\n"
        "print(len(timm.list_models('tokenformer_*')) > 0)\n"
        "import tokenformer_mm.language\n"
        "print('webdataset' in sys.modules)\n"
    )
    result = _python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "True", "False"]


def test_a_checkout_that_was_never_installed_says_how_to_install_it():
    """The checkout first on ``sys.path`` and no install's finder (``-S``: no .pth files run):
    the towers are not inside ``tokenformer_mm/``, and the import names the fix."""
    import sysconfig

    code = (
        f"import sys; sys.path[:0] = [{str(ROOT)!r}]; "
        f"sys.path.append({sysconfig.get_paths()['purelib']!r})\n"
        "import tokenformer_mm\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "tokenformer_mm.vision is not installed" in result.stderr
    assert "pip install -e ." in result.stderr


def test_a_tower_imported_under_its_folder_name_says_what_to_import():
    for tower in ("vision", "language"):
        result = _python(f"import {tower}", cwd=ROOT)
        assert result.returncode != 0
        assert f"installs as tokenformer_mm.{tower}" in result.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (no stale ``build/`` of the checkout in it)."""
    source = tmp_path_factory.mktemp("source") / "tokenformer-mm"
    leftovers = (".*", "build", "dist", "runs", "outputs", "multirun", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*leftovers))
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    result = subprocess.run(
        [*build, "-w", str(out), str(source)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("tokenformer_mm-*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package_with_every_subpackage(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "tokenformer_mm"
    }
    packages = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("__init__.py")}
    assert packages == {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert "tokenformer_mm/clip/configs/TokenformerCLIP-micro.json" in names


@pytest.mark.slow
def test_a_regular_install_imports_every_part_and_no_generic_name(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import importlib, tokenformer_mm, tokenformer_mm.vision, tokenformer_mm.language\n"
        "import tokenformer_mm.clip, tokenformer_mm.train, tokenformer_mm.clip.task\n"
        "import open_clip, timm\n"
        f"assert tokenformer_mm.__file__.startswith({str(site)!r}), tokenformer_mm.__file__\n"
        f"assert tokenformer_mm.vision.__file__.startswith({str(site)!r})\n"
        "assert 'TokenformerCLIP-micro' in open_clip.list_models()\n"
        "timm.create_model('tokenformer_micro_patch4_32')\n"
        "for name in ('vision', 'language'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        print(name, 'absent')\n"
    )
    result = _python(code, cwd=tmp_path, pythonpath=site)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["vision absent", "language absent"]


def _installed_closure(roots: tuple[str, ...]) -> list:
    """The installed distributions ``roots`` need (their requirements, transitively)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    found, stack = {}, list(roots)
    while stack:
        name = stack.pop()
        key = name.lower().replace("_", "-")
        if key in found:
            continue
        try:
            found[key] = distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                stack.append(requirement.name)
    return list(found.values())


@pytest.mark.slow
def test_the_core_works_beside_torch_timm_and_safetensors_alone(wheel, tmp_path):
    """``pip install --no-deps`` of the wheel next to torch, timm and safetensors (and what they
    require) only: the models, timm's registration, growth; each extra names itself when missing."""
    site, deps = tmp_path / "site", tmp_path / "deps"
    zipfile.ZipFile(wheel).extractall(site)
    deps.mkdir()
    for distribution in _installed_closure(("torch", "timm", "safetensors")):
        for top in {file.parts[0] for file in distribution.files or []}:
            source = Path(distribution.locate_file(top))
            if top not in ("..", "__pycache__") and source.exists() and not (deps / top).exists():
                (deps / top).symlink_to(source)
    code = (
        f"import sys; sys.path[:0] = [{str(site)!r}, {str(deps)!r}]\n"
        "import torch, timm, tokenformer_mm\n"
        "from tokenformer_mm import grow_model\n"
        "from tokenformer_mm.language import TokenformerLM, lm_config\n"
        "model = timm.create_model('tokenformer_micro_patch4_32', num_classes=10)\n"
        "x = torch.randn(2, 3, 32, 32)\n"
        "before = model.eval()(x)\n"
        "grow_model(model, factor=2)\n"
        "print(tuple(before.shape), torch.allclose(model(x), before, atol=1e-5))\n"
        "print(tuple(TokenformerLM(lm_config('tiny'))(torch.randint(0, 256, (1, 4)))[0].shape))\n"
        "for name in ('tokenformer_mm.train', 'tokenformer_mm.clip', 'tokenformer_mm.data'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ModuleNotFoundError as error:\n"
        "        print(name, str(error).split(': it comes with the ')[1].split(' ')[0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "(2, 10) True",
        "(1, 1, 320)",
        "tokenformer_mm.train [train]",
        "tokenformer_mm.clip [clip]",
        "tokenformer_mm.data [train]",
    ]
