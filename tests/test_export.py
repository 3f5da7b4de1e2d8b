"""Exports reproduce the eager model: ONNX through both of torch.onnx's exporters (TorchScript,
``dynamo=False``; torch.export, ``dynamo=True``) run by onnxruntime, ``torch.export`` programs,
and timm's own ONNX export (docs/export.md).

Each graph is traced on one shape and run on others (free batch; free length for the language
model; free image size for a ``dynamic_img_size`` model), and agrees with eager to the tolerance
of one fp32 function computed in another order (``assert_equal_up_to_rounding``: 1e-5 of the
outputs' scale; measured: at most 1.5e-6). A wrong graph differs by ~1e-1 (issue 26: timm's
onnx_export.py wrote a model off in 993 of 1,000 logits).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import onnxruntime
import pytest
import timm
import torch
from timm.utils.onnx import onnx_export
from torch.export import Dim

import tokenformer_mm  # noqa: F401  (registers the tokenformer_* models with timm)
from scripts.export import AllLogits, write_graph
from scripts.export import main as export_main
from tokenformer_mm.language import TokenformerLM
from tokenformer_mm.language.model import lm_config
from tokenformer_mm.train import load_run

from .conftest import assert_equal_up_to_rounding
from .engine_utils import ROOT, fit_here, run

# The dynamo exporter takes ~10 s a model on 2 cores (torch.export, then onnxscript).
EXPORTERS = pytest.mark.parametrize(
    "dynamo",
    [
        pytest.param(False, id="torchscript"),
        pytest.param(True, id="dynamo", marks=pytest.mark.slow),
    ],
)
# timm's scripts, where a pytorch-image-models checkout is at hand (not in CI).
TIMM_REPO = Path(os.environ.get("TIMM_REPO", ROOT.parent / "pytorch-image-models"))


def image_model(**kwargs) -> torch.nn.Module:
    return timm.create_model("tokenformer_micro_patch4_32", num_classes=10, **kwargs).eval()


def language_model() -> AllLogits:
    """Token ids (B, T) -> logits of every position (B, T, vocab); context 64."""
    return AllLogits(TokenformerLM(lm_config("tiny"))).eval()


def onnx_outputs(path: Path, inputs: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path))
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0])


def to_onnx(model, example, path: Path, dynamo: bool, axes: dict[int, str]) -> None:
    """``model`` through one of torch.onnx's exporters, the ``axes`` of input and output free."""
    if dynamo:
        torch.onnx.export(model, (example,), path, dynamo=True, dynamic_shapes=(axes,))
    else:
        dynamic_axes = {"input": axes, "output": {i: n for i, n in axes.items() if i < 2}}
        torch.onnx.export(
            model, (example,), path, dynamo=False, input_names=["input"],
            output_names=["output"], dynamic_axes=dynamic_axes,
        )  # fmt: skip


def assert_reproduces(model, outputs_of, inputs: list[torch.Tensor]) -> None:
    for x in inputs:
        with torch.no_grad():
            expected = model(x)
        assert_equal_up_to_rounding(outputs_of(x), expected)


@EXPORTERS
def test_onnx_of_the_image_model_reproduces_it_at_every_batch_size(tmp_path, dynamo):
    """The TorchScript exporter wrote a wrong graph before issue 26: under a trace the fused
    Pattention's scores buffer became a constant."""
    model = image_model()
    to_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "m.onnx", dynamo, {0: "batch"})
    inputs = [torch.randn(b, 3, 32, 32) for b in (1, 3)]
    assert_reproduces(model, lambda x: onnx_outputs(tmp_path / "m.onnx", x), inputs)


@EXPORTERS
def test_onnx_of_the_language_model_reproduces_it_at_every_batch_and_length(tmp_path, dynamo):
    model = language_model()
    example = torch.randint(320, (2, 16))
    to_onnx(model, example, tmp_path / "lm.onnx", dynamo, {0: "batch", 1: "seq"})
    inputs = [torch.randint(320, shape) for shape in ((3, 40), (1, 64), (1, 1))]
    assert_reproduces(model, lambda x: onnx_outputs(tmp_path / "lm.onnx", x), inputs)


def test_models_under_mup_export_as_they_compute(tmp_path):
    """The values' multiplier (b / n: here 2 and 1/2) is in the graphs: ONNX (TorchScript's
    exporter) and a torch.export program reproduce the eager models."""
    vision = image_model(parametrization="mup", qkv_tokens=48, ffn_tokens=768)
    to_onnx(vision, torch.randn(2, 3, 32, 32), tmp_path / "m.onnx", False, {0: "batch"})
    inputs = [torch.randn(b, 3, 32, 32) for b in (1, 3)]
    assert_reproduces(vision, lambda x: onnx_outputs(tmp_path / "m.onnx", x), inputs)
    lm = AllLogits(TokenformerLM(lm_config("tiny", parametrization="mup"))).eval()
    program = torch.export.export(lm, (torch.randint(320, (2, 16)),))
    tokens = torch.randint(320, (2, 16))
    assert_equal_up_to_rounding(program.module()(tokens).detach(), lm(tokens).detach())


def test_exported_programs_reproduce_both_models_and_run_with_trainable_parameters():
    """torch.export records the plain path: the fused one's ``out=`` matmuls made a program
    that failed wherever a parameter requires grad."""
    vision = image_model(dynamic_img_size=True)
    sizes = {0: Dim("batch"), 2: Dim.AUTO, 3: Dim.AUTO}  # H, W: multiples of the patch
    program = torch.export.export(vision, (torch.randn(2, 3, 32, 32),), dynamic_shapes=(sizes,))
    assert_reproduces(vision, program.module(), [torch.randn(3, 3, 32, 32)])
    assert_reproduces(vision, program.module(), [torch.randn(1, 3, 48, 40)])
    lm = language_model()
    seq = {0: Dim("batch"), 1: Dim("seq", max=64)}
    program = torch.export.export(lm, (torch.randint(320, (2, 16)),), dynamic_shapes=(seq,))
    tokens = torch.randint(320, (3, 40))
    assert_equal_up_to_rounding(program.module()(tokens).detach(), lm(tokens).detach())
    with pytest.raises(AssertionError, match="64"):  # beyond the context, as eager refuses
        program.module()(torch.randint(320, (1, 65)))


def test_a_trace_of_a_dynamic_image_size_model_refuses_naming_the_exporters_that_work(tmp_path):
    """A trace would resample the position embedding for the example's grid alone."""
    model = image_model(dynamic_img_size=True)
    with pytest.raises(ValueError, match=r"dynamo=True\) or torch.export"):
        to_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "m.onnx", False, {0: "batch"})


@pytest.mark.slow
def test_onnx_of_a_dynamic_image_size_model_reproduces_it_at_other_sizes(tmp_path):
    model = image_model(dynamic_img_size=True)
    axes = {0: "batch", 2: "height", 3: "width"}
    to_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "m.onnx", True, axes)
    inputs = [torch.randn(1, 3, 48, 40), torch.randn(3, 3, 32, 32)]
    assert_reproduces(model, lambda x: onnx_outputs(tmp_path / "m.onnx", x), inputs)


@EXPORTERS
def test_timm_onnx_export_as_its_script_calls_it(tmp_path, dynamo):
    """``timm.utils.onnx.onnx_export``, what timm's onnx_export.py runs, with its defaults
    (batch 1) and its own check of onnxruntime against PyTorch (absolute 1e-3)."""
    model = image_model()
    onnx_export(
        model, str(tmp_path / "m.onnx"), batch_size=1, check_forward=True, use_dynamo=dynamo
    )
    inputs = [torch.randn(b, 3, 32, 32) for b in (1, 4)]
    assert_reproduces(model, lambda x: onnx_outputs(tmp_path / "m.onnx", x), inputs)


@pytest.mark.slow
@pytest.mark.skipif(
    not (TIMM_REPO / "onnx_export.py").is_file(), reason="no pytorch-image-models checkout"
)
@pytest.mark.parametrize("flags", [[], ["--dynamo"]], ids=["torchscript", "dynamo"])
def test_timm_onnx_export_script_unmodified(tmp_path, flags):
    model = image_model()
    torch.save(model.state_dict(), tmp_path / "model.pth")
    script = [sys.executable, "-m", "tokenformer_mm", str(TIMM_REPO / "onnx_export.py")]
    model_args = ["--model", "tokenformer_micro_patch4_32", "--num-classes", "10"]
    checkpoint = ["--checkpoint", str(tmp_path / "model.pth")]
    run([*script, str(tmp_path / "m.onnx"), *model_args, *checkpoint, "--check-forward", *flags])
    inputs = [torch.randn(b, 3, 32, 32) for b in (1, 3)]
    assert_reproduces(model, lambda x: onnx_outputs(tmp_path / "m.onnx", x), inputs)


def test_export_script_writes_an_image_model_of_any_size_as_an_exported_program(tmp_path):
    model = image_model(dynamic_img_size=True)
    program = torch.export.load(write_graph(model, tmp_path / "m.pt2", onnx=False)).module()
    assert_reproduces(model, program, [torch.randn(3, 3, 32, 32), torch.randn(1, 3, 48, 40)])


@pytest.mark.slow
def test_export_script_writes_a_language_run_as_onnx_and_as_an_exported_program(tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["train.steps=2", "+model.overrides.context_length=64", "data.seq_len=32"]
    fit_here([*overrides, f"run_dir={run_dir}"], config="language")
    export_main([str(run_dir), str(tmp_path / "lm.onnx"), "--onnx"])
    export_main([str(run_dir), str(tmp_path / "lm.pt2"), "--export-program"])
    model = AllLogits(load_run(run_dir)[2]).eval()
    program = torch.export.load(tmp_path / "lm.pt2").module()
    inputs = [torch.randint(320, shape) for shape in ((3, 40), (1, 64))]
    assert_reproduces(model, lambda x: onnx_outputs(tmp_path / "lm.onnx", x), inputs)
    assert_reproduces(model, program, inputs)
    with pytest.raises(SystemExit):  # an existing file is never overwritten
        export_main([str(run_dir), str(tmp_path / "lm.onnx"), "--onnx"])
