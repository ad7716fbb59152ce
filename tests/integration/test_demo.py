"""`python -m megatron_endprompt.demo --fast` runs every stage end to end (README command 1, shrunk)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_fast_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "megatron_endprompt.demo", "--fast", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    # every stage ran and was timed
    stages = {"corpus", "tokenizer", "data", "warmup", "base", "extend", "eval", "export", "report"}
    assert set(summary["timings"]) == stages
    # three models evaluated on both tasks at every length, scores are percentages
    assert set(summary["results"]) == {"base", "yarn_only", "extended"}
    lengths = {str(n) for n in summary["config"]["eval_lengths"]}
    for per_task in summary["results"].values():
        for task in ("passkey", "niah_single_1"):
            assert set(per_task[task]) == lengths
            assert all(0.0 <= v <= 100.0 for v in per_task[task].values())
    # held-out perplexity at every length for every model (finite and above 1)
    for per_len in summary["perplexity"].values():
        assert set(per_len) == lengths and all(1.0 < v < 1e6 for v in per_len.values())
    # training ran and logged a finite loss; the HF export reproduces the Megatron logits
    assert 0 < summary["base_loss"] < 10 and 0 < summary["extend_loss"] < 10
    assert summary["export"]["max_abs_logit_diff"] < 1e-3
    assert (Path(summary["export"]["hf_dir"]) / "config.json").is_file()
    # the extension really changed the model config: YaRN factor 8 from P0 = 256 up to T = 8 * P0
    for run in ("pi_only", "extended"):
        saved = json.loads(next((tmp_path / "runs" / run).rglob("endprompt_model.json")).read_text())
        assert saved["rope_scaling"]["type"] == "yarn" and saved["rope_scaling"]["factor"] == 8.0, run
        assert saved["rope_scaling"]["original_max_position_embeddings"] == 256, run
    # the base started from the warm-up; every dataset starts samples at document starts
    assert (tmp_path / "runs" / "warmup" / "metrics.jsonl").is_file()
    for name in ("warmup", "base", "endprompt"):
        assert (
            json.loads((tmp_path / "data" / f"{name}.meta.json").read_text())["config"]["packing"]
            == "aligned"
        )
    warmup = (tmp_path / "corpus" / "warmup.jsonl").read_text().splitlines()
    assert warmup and all("The pass key is" in line for line in warmup)
    report = (tmp_path / "results.md").read_text()
    assert "| extended |" in report and "## passkey" in report
    # the fast preset: 1 prompt per depth, 1 depth; perplexity windows as measured
    assert "Each accuracy cell averages 1 prompts (1 per needle depth x 1 depths)" in report
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the EndPrompt samples are P0 = 256 tokens whose cue ("End.") sits at the end of T = 2048
    from megatron_endprompt.data import load_samples

    sample = load_samples(str(tmp_path / "data" / "endprompt"))[0]
    assert sample["tokens"].shape == (256,)
    assert sample["position_ids"][-1] == 2047 and sample["position_ids"][0] == 0
