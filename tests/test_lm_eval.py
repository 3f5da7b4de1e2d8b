"""lm-evaluation-harness's own ``hf`` model (HFLM, causal backend) scores a TokenformerLM."""

import json
import subprocess
import sys

import lm_eval
import pytest
import torch
from lm_eval.tasks import TaskManager

import tokenformer_mm.language.hf  # noqa: F401  (registers the Auto classes HFLM loads through)
from tokenformer_mm.language import ByteTokenizer, TokenformerLM, lm_config

DOCS = [
    {"context": "The quick brown fox", "continuation": " jumps over"},
    {"context": "import os\n", "continuation": "import sys"},  # trailing whitespace: see below
    {"context": "déjà", "continuation": " vu, 漢字"},
]
TASK = """task: tokenformer_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def direct_loglikelihood(model: TokenformerLM, context: str, continuation: str) -> float:
    """log p(continuation | context) summed over the continuation's bytes. lm-eval moves a
    context's trailing whitespace to the continuation before it scores; so does this."""
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped) :] + continuation
    given, scored = ByteTokenizer().encode(context), ByteTokenizer().encode(continuation)
    tokens = torch.tensor([given + scored])
    with torch.no_grad():
        logprobs = model(tokens[:, :-1], all_logits=True)[0].float().log_softmax(-1)
    picked = logprobs[0, len(given) - 1 :].gather(-1, torch.tensor(scored)[:, None])
    return picked.sum().item()


def test_lm_evals_hf_model_scores_every_request_as_a_direct_computation(tmp_path):
    model = TokenformerLM(lm_config("tiny")).eval()
    model.save_pretrained(tmp_path / "lm", tokenizer=ByteTokenizer())
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "local.yaml").write_text(TASK.format(data=data))
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={tmp_path / 'lm'},backend=causal,dtype=float32",
        tasks=["tokenformer_local"],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        log_samples=True,
        batch_size=2,
        device="cpu",
    )
    samples = results["samples"]["tokenformer_local"]
    assert len(samples) == len(DOCS)
    for sample in samples:
        loglikelihood, _ = sample["filtered_resps"][0]
        doc = sample["doc"]
        expected = direct_loglikelihood(model, doc["context"], doc["continuation"])
        assert abs(loglikelihood - expected) <= 1e-4 * abs(expected), doc


@pytest.mark.slow
def test_lm_evals_command_line_runs_through_python_m_tokenformer_mm(tmp_path):
    """lm-eval's own CLI never imports this package; the entry point registers the model type."""
    TokenformerLM(lm_config("tiny")).save_pretrained(tmp_path / "lm", tokenizer=ByteTokenizer())
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "local.yaml").write_text(TASK.format(data=data))
    command = [sys.executable, "-m", "tokenformer_mm", "-m", "lm_eval", "--model", "hf"]
    command += ["--model_args", f"pretrained={tmp_path / 'lm'},backend=causal,dtype=float32"]
    command += ["--tasks", "tokenformer_local", "--include_path", str(tmp_path / "tasks")]
    command += ["--device", "cpu", "--batch_size", "2", "--output_path", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tokenformer_local" in result.stdout and "acc" in result.stdout
