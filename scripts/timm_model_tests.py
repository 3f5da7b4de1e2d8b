"""Run timm's own model test suite on the tokenformer_* family, as timm runs its ViT family.

    python scripts/timm_model_tests.py                 # every test of tests/test_models.py
    python scripts/timm_model_tests.py -k "tokenformer and fx"   # pytest arguments pass through

Fetches the source distribution of the installed timm version from the package index (its
``tests/test_models.py``), adds the family to the two lists timm's ViTs are in (token-output
models with ``forward_intermediates``: ``NON_STD_FILTERS`` and ``FEAT_INTER_FILTERS``), registers
the family through a ``conftest.py`` (``import tokenformer_mm``) and runs the tests that name it.
Nothing of timm's is changed beyond those two list entries.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import timm

ANCHOR = "NUM_NON_STD = len(NON_STD_FILTERS)"  # right after the two lists, in every timm 1.0.x
OURS = "FEAT_INTER_FILTERS.append('tokenformer_vit')\nNON_STD_FILTERS.append('tokenformer_*')\n"


def timm_test_file(work: Path) -> Path:
    """``tests/test_models.py`` of the installed timm, with the family added to the ViT lists."""
    version = timm.__version__
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    download += ["--no-binary", ":all:", f"timm=={version}", "-d", str(work)]
    subprocess.run(download, check=True)
    (archive,) = work.glob(f"timm-{version}.tar.gz")
    with tarfile.open(archive) as tar:
        source = tar.extractfile(f"timm-{version}/tests/test_models.py").read().decode()
    if ANCHOR not in source:
        raise ValueError(f"timm {version}'s test_models.py has no line {ANCHOR!r} to patch after")
    tests = work / "test_models.py"
    tests.write_text(source.replace(ANCHOR, OURS + ANCHOR, 1))
    (work / "conftest.py").write_text(
        "import tokenformer_mm  # registers the tokenformer_* family\n"
    )
    return tests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _, pytest_args = parser.parse_known_args(argv)  # everything else goes to pytest
    with tempfile.TemporaryDirectory(prefix="timm-tests-") as work:
        tests = timm_test_file(Path(work))
        command = [sys.executable, "-m", "pytest", str(tests), "-q", "-p", "no:cacheprovider"]
        selection = [] if "-k" in pytest_args else ["-k", "tokenformer"]
        command += ["-W", "ignore", *selection, *pytest_args]
        return subprocess.run(command, cwd=work).returncode


if __name__ == "__main__":
    sys.exit(main())
