"""benchmarks/eval_decoding.py keeps working: on a tiny random checkpoint its Megatron modes give the same outputs
(the script checks), the forward counts are what the shortcuts promise, and the hf row is the same model."""

import json
import os
import subprocess
import sys
from pathlib import Path

from megatron_endprompt.convert import hf_to_megatron
from megatron_endprompt.convert.testing import write_random_hf_llama
from megatron_endprompt.data.tokenizers import train_sentencepiece
from megatron_endprompt.eval.corpus import task_texts
from megatron_endprompt.model.config import get_preset

REPO = Path(__file__).resolve().parents[2]


def run_benchmark(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "eval_decoding.py"),
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def test_eval_decoding_benchmark_modes_agree_and_count_forwards(tmp_path: Path) -> None:
    sp = train_sentencepiece(task_texts(["passkey", "niah_single_1"], per_task=3), tmp_path / "sp", 512)
    write_random_hf_llama(tmp_path / "hf", get_preset("tiny").replace(max_position_embeddings=512))
    hf_to_megatron(tmp_path / "hf", tmp_path / "meg")
    args = ["--checkpoint", str(tmp_path / "meg"), "--tokenizer", str(sp), "--length", "160"]
    args += ["--hf-checkpoint", str(tmp_path / "hf")]
    args += ["--depths", "0", "1", "--samples", "2", "--task-option", "passkey.key_max=999"]
    args += ["--task-option", "niah_single_1.number_digits=3"]  # answers fit the draft (max_new_tokens 5)
    proc = run_benchmark(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "eval_decoding.json").read_text())
    modes = data["modes"]
    prompts = 2 * 2 * 2  # tasks x depths x samples
    # A random model is wrong, so the draft saves little; keeping the forward saves exactly one per prompt.
    assert modes["plain"]["forwards"] >= modes["draft"]["forwards"]
    assert modes["draft"]["forwards"] - modes["draft+kept"]["forwards"] == prompts
    # the KV cache changes what a forward costs, not how many there are
    assert modes["kv cache"]["forwards"] == modes["draft+kept"]["forwards"]
    assert modes["plain"]["results"] == modes["draft+kept"]["results"] == modes["kv cache"]["results"]
    assert modes["hf"]["forwards"] is None and data["hf_agreement"]["prompts"] == prompts
    assert data["hf_agreement"]["nll_max_diff"] < 1e-3
    report = (tmp_path / "out" / "eval_decoding.md").read_text()
    assert "| draft+kept |" in report and "| kv cache |" in report and "| hf |" in report
    bad = run_benchmark(tmp_path, *args[:4], "--task-option", "passkey=3")
    assert bad.returncode != 0 and "--task-option" in bad.stderr
