"""``python -m tokenformer_mm``: upstream scripts run unchanged with our models registered."""

import subprocess
import sys

import pytest

from tokenformer_mm.__main__ import main

# What an upstream script does: look our models up by name, never importing tokenformer_mm.
PROBE = """
import sys
import open_clip, timm, torch
import sibling
model = timm.create_model("tokenformer_micro_patch4_32", num_classes=3)
logits = model(torch.zeros(1, 3, 32, 32))
print(tuple(logits.shape), "TokenformerCLIP-micro" in open_clip.list_models())
print(__name__, sys.argv[1:], sibling.VALUE)
"""


def _run(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "tokenformer_mm", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_script_path_runs_as_python_would_with_the_models_registered(tmp_path):
    scripts = tmp_path / "upstream"
    scripts.mkdir()
    (scripts / "train.py").write_text(PROBE)
    (scripts / "sibling.py").write_text("VALUE = 'found'\n")  # the script's folder is on sys.path
    result = _run([str(scripts / "train.py"), "--model", "x"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["(1, 3) True", "__main__ ['--model', 'x'] found"]


def test_a_module_runs_as_python_m_would_with_the_models_registered(tmp_path):
    (tmp_path / "upstream_main.py").write_text(PROBE)
    (tmp_path / "sibling.py").write_text("VALUE = 'found'\n")
    result = _run(["-m", "upstream_main", "--lr", "2e-3"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["(1, 3) True", "__main__ ['--lr', '2e-3'] found"]


def test_bad_invocations_say_what_to_pass(tmp_path, capsys):
    """The command line's checks, through ``main(argv)`` as ``python -m tokenformer_mm`` calls it
    (in this process: each check exits before anything is imported)."""
    with pytest.raises(SystemExit, match=f"no script at {str(tmp_path / 'train.py')!r}"):
        main([str(tmp_path / "train.py")])
    with pytest.raises(SystemExit, match="-m needs a module name"):
        main(["-m"])
    with pytest.raises(SystemExit) as usage:
        main([])
    assert usage.value.code == 2 and "usage: python -m tokenformer_mm" in capsys.readouterr().out


def test_an_unclipped_tokenformer_clip_run_under_open_clips_trainer_is_warned(caplog):
    """open_clip's trainer does not clip by default; the entry point says what to add."""
    from tokenformer_mm.__main__ import warn_unclipped_clip

    base = ["-m", "open_clip_train.main", "--model", "TokenformerCLIP-micro", "--lr", "2e-3"]
    with caplog.at_level("WARNING", logger="tokenformer_mm"):
        warn_unclipped_clip(base)
        warn_unclipped_clip([*base, "--grad-clip-norm", "1.0"])
        warn_unclipped_clip(["-m", "open_clip_train.main", "--model=ViT-B-32"])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "TokenformerCLIP-micro" in warnings[0]
    assert "Add --grad-clip-norm 1.0" in warnings[0]


def test_open_clips_trainer_on_a_webdataset_outside_its_pins_is_warned(caplog, monkeypatch):
    """open_clip_torch's own metadata (its ``training`` extra) against the installed versions:
    webdataset 1.0 breaks open_clip_train's loader, 0.2.86 is what it pins."""
    from importlib import metadata

    from tokenformer_mm.__main__ import warn_unmet_open_clip_train_requirements

    installed = metadata.version

    def webdataset_at(version):
        monkeypatch.setattr(
            metadata, "version", lambda name: version if name == "webdataset" else installed(name)
        )

    argv = ["-m", "open_clip_train.main", "--model", "TokenformerCLIP-micro"]
    with caplog.at_level("WARNING", logger="tokenformer_mm"):
        webdataset_at("0.2.86")
        warn_unmet_open_clip_train_requirements(argv)
        assert not caplog.records
        webdataset_at("1.0.2")
        warn_unmet_open_clip_train_requirements(["-m", "lm_eval"])  # another module: no check
        warn_unmet_open_clip_train_requirements(argv)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "webdataset 1.0.2 (open_clip_torch[training] needs webdataset" in warning
    assert "pip install 'open_clip_torch[training]'" in warning
