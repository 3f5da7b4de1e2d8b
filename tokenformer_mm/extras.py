"""What each optional part needs beyond the core (torch, timm, safetensors), and the error that
names the extra to install when it is missing."""

from __future__ import annotations

EXTRAS = {
    "train": "the engine, the data pipelines and the scripts (Hydra, webdataset, matplotlib, ...)",
    "clip": "the open_clip integration (open_clip_torch)",
    "hf": "the Hugging Face transformers classes of the language tower (transformers)",
    "export": "ONNX export and running the file (onnx, onnxscript, onnxruntime)",
}


def missing_extra(error: ModuleNotFoundError, extra: str) -> ModuleNotFoundError:
    """``error`` (a failed import) restated with the extra that provides the module."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; expected one of {tuple(EXTRAS)}")
    return ModuleNotFoundError(
        f"{error.name!r} is not installed: it comes with the [{extra}] extra, "
        f"{EXTRAS[extra]}. Install it with: pip install 'tokenformer-mm[{extra}]' "
        "(or [all] for everything)",
        name=error.name,
    )


def unmet_requirements(distribution: str, extra: str) -> list[str]:
    """The installed packages outside what ``distribution`` declares for its ``extra``, each as
    "name VERSION (DIST[EXTRA] needs name SPEC)". Packages not installed are left to the
    import that needs them. Upstream scripts run by ``python -m tokenformer_mm`` fail far from
    the cause on such a version (open_clip's trainer on webdataset > 0.2.86: KeyError 'fname')."""
    from importlib import metadata

    from packaging.requirements import Requirement

    unmet = []
    for line in metadata.requires(distribution) or []:
        requirement = Requirement(line)
        if requirement.marker is None or not requirement.marker.evaluate({"extra": extra}):
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(
                f"{requirement.name} {installed} ({distribution}[{extra}] needs "
                f"{requirement.name}{requirement.specifier})"
            )
    return unmet
