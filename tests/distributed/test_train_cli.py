"""End-to-end training through the CLI (`python -m megatron_endprompt.train`), one CPU process per run.

On data built by the real builder from a repetitive corpus: the tiny recipe learns; a run SIGKILLed while
writing a checkpoint, resumed, SIGKILLed again mid-interval and resumed again reproduces the uninterrupted run's
loss sequence bitwise and reads the same samples in the same order (none skipped or repeated); the half-written
checkpoint is never picked as latest; a NaN loss stops the run naming the step.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "examples" / "tiny_cpu.yaml"
PASSAGE = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    "A river runs to the sea, and the sea gives the river back as rain. "
)

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def data_prefix(tmp_path_factory) -> str:
    """EndPrompt samples (P=64, T=256, cue 'End.') of a repetitive corpus, built with the real builder."""
    from megatron_endprompt.data.builder import BuildConfig, build
    from megatron_endprompt.data.tokenizers import train_sentencepiece
    from megatron_endprompt.positions import SchemeConfig

    tmp = tmp_path_factory.mktemp("train_cli_data")
    docs = [PASSAGE * (2 + i % 5) for i in range(150)]
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    model = train_sentencepiece(docs, tmp / "sp", vocab_size=400)
    prefix = str(tmp / "endprompt")
    build(
        BuildConfig(
            input=[str(corpus)],
            output_prefix=prefix,
            tokenizer_type="SentencePieceTokenizer",
            tokenizer_model=model,
            scheme=SchemeConfig(scheme="endprompt", seq_length=64, target_length=256),
            cues=["End."],
            append_eod=True,
        )
    )
    return prefix


def train(save: Path, *args: str, prefix: str, nproc: int = 1) -> tuple[int, str]:
    """Run the CLI (under torchrun when nproc > 1); returns (exit code, combined output). Output goes to a file
    and the run gets its own process group: after a SIGKILL, megatron's checkpoint-writer helper processes would
    otherwise outlive it (holding pipes open); the group is killed once the trainer has exited."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd = [
        *launcher, "-m", "megatron_endprompt.train", "--config", str(RECIPE),
        "--data.mock", "false", "--data.paths", prefix, "--data.split", "100,0,0",
        "--training.train_steps", "16", "--optimizer.warmup_steps", "2",
        "--logging.log_interval", "1", "--logging.eval_interval", "none",
        "--checkpoint.save", str(save), "--checkpoint.save_interval", "4",
        "--debug.log_sample_indices", "true", *args,
    ]  # fmt: skip
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    log = save.parent / f"{save.name}.{len(list(save.parent.glob(save.name + '.*.log')))}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=240)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return rc, log.read_text()


def metrics(save: Path) -> dict[int, dict]:
    """Training records by step; a step logged twice would make the test fail."""
    out: dict[int, dict] = {}
    for line in (save / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" not in record:
            continue
        assert record["step"] not in out, f"step {record['step']} logged twice"
        out[record["step"]] = record
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_prefix) -> tuple[Path, dict[int, dict]]:
    """An uninterrupted 16-step run (checkpoints every 4 steps) and its metrics by step."""
    ref_dir = tmp_path_factory.mktemp("reference") / "run"
    rc, out = train(ref_dir, prefix=data_prefix)
    assert rc == 0, out[-3000:]
    return ref_dir, metrics(ref_dir)


def test_learns_and_resumes_bitwise_after_kill_9(tmp_path, data_prefix, reference) -> None:
    ref_dir, want = reference
    run_dir = tmp_path / "interrupted"
    assert sorted(want) == list(range(1, 17))
    losses = [want[s]["loss"] for s in range(1, 17)]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0, losses  # learns the repetitive corpus
    assert (ref_dir / "latest").read_text().strip() == "iter_0000016"

    # 1) SIGKILL while the step-12 checkpoint is being written: `latest` stays at 8, the partial dir is no checkpoint
    rc, out = train(run_dir, "--debug.kill_during_save_at", "12", prefix=data_prefix)
    assert rc == -signal.SIGKILL, out[-3000:]
    assert (run_dir / "latest").read_text().strip() == "iter_0000008"
    assert (run_dir / "iter_0000012.tmp").is_dir() and not (run_dir / "iter_0000012").exists()
    # 2) resumed: from 8 (the half-written 12 is ignored), re-saves 12, then SIGKILL right after step 14
    rc, out = train(run_dir, "--debug.kill_at_step", "14", prefix=data_prefix)
    assert rc == -signal.SIGKILL, out[-3000:]
    assert "at iteration 8" in out
    assert (run_dir / "latest").read_text().strip() == "iter_0000012"

    got = metrics(run_dir)  # steps 9.. of the first run were dropped when the second resumed from 8
    assert sorted(got) == list(range(1, 14))
    for step in range(1, 14):
        for key in ("loss", "text_loss", "cue_loss", "lr", "grad_norm", "consumed_samples"):
            assert got[step][key] == want[step][key], (step, key, got[step][key], want[step][key])
        assert got[step]["sample_indices"] == want[step]["sample_indices"], step
        assert got[step]["sample_crc32"] == want[step]["sample_crc32"], step
    consumed = [i for s in range(1, 14) for i in got[s]["sample_indices"]]
    assert consumed == list(range(13 * 8))  # every stream position exactly once, in order


def test_two_data_parallel_ranks_match_one_rank_and_stop_on_sigterm(tmp_path, data_prefix, reference) -> None:
    """torchrun with 2 ranks (DP=2: one micro-batch each instead of two on one rank): the same global batches,
    the same losses up to float reduction order, only rank 0 writes metrics. SIGTERM delivered to rank 0 after
    step 10 stops both ranks after that step with a checkpoint (exit 0)."""
    _, want = reference
    run = tmp_path / "dp2"
    rc, out = train(run, "--debug.signal_at_step", "10", prefix=data_prefix, nproc=2)
    assert rc == 0, out[-3000:]
    assert "dp=2" in out and "stopped by SIGTERM after step 10" in out
    assert (run / "latest").read_text().strip() == "iter_0000010"
    got = metrics(run)  # fails if both ranks wrote records
    assert sorted(got) == list(range(1, 11))
    for step in range(1, 11):
        assert got[step]["sample_indices"] == want[step]["sample_indices"]
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=1e-4), step
        assert got[step]["lr"] == want[step]["lr"]


@pytest.fixture
def in_process():
    """In-process runs initialise torch.distributed and megatron's groups here: tear them down afterwards so
    that later tests find a clean process."""
    yield
    from megatron_endprompt.parallel import destroy

    destroy()


def test_nan_loss_stops_with_the_step(tmp_path, caplog, in_process) -> None:
    """In-process (no checkpointing): an absurd learning rate makes the loss non-finite within a few steps."""
    from megatron_endprompt.train import EXIT_NONFINITE, main

    args = ["--config", str(RECIPE), "--optimizer.lr", "1e30", "--optimizer.min_lr", "0", "--optimizer.clip_grad",
            "0", "--optimizer.warmup_steps", "0", "--training.train_steps", "6", "--logging.eval_interval", "none",
            "--logging.log_interval", "1", "--logging.log_dir", str(tmp_path)]  # fmt: skip
    with caplog.at_level(logging.INFO):
        rc = main(args)
    assert rc == EXIT_NONFINITE
    match = re.search(r"step (\d+): training loss is (nan|inf)", caplog.text)
    assert match, caplog.text[-2000:]
    logged = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, int(match.group(1))))  # every finite step logged, the bad one not


def test_init_from_hf_checkpoint_first_loss_matches_transformers(tmp_path, in_process) -> None:
    """--checkpoint.init_from an HF-converted dir (model config read from its endprompt_model.json): the loss of
    step 1 (computed before the first update) equals transformers' weighted loss on the same batch."""
    transformers = pytest.importorskip("transformers")
    import torch

    from megatron_endprompt.convert import hf_to_megatron
    from megatron_endprompt.convert.testing import write_random_hf_llama
    from megatron_endprompt.model.config import get_preset
    from megatron_endprompt.train import main
    from megatron_endprompt.training.config import load_config
    from megatron_endprompt.training.datasets import build_splits

    write_random_hf_llama(tmp_path / "hf", get_preset("tiny"), seed=3)
    hf_to_megatron(tmp_path / "hf", tmp_path / "megatron")
    args = ["--config", str(RECIPE), "--model.preset", "none", "--checkpoint.init_from", str(tmp_path / "megatron"),
            "--training.train_steps", "1", "--logging.eval_interval", "none", "--logging.log_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    got = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["loss"]

    cfg = load_config(RECIPE, args[2:])
    cfg.validate(world_size=1)
    train_set, _ = build_splits(cfg, cfg.model_config())
    batch = [train_set[i] for i in range(cfg.data.global_batch_size)]
    tokens, labels, weights, positions = (
        torch.from_numpy(np.stack([s[k] for s in batch]))
        for k in ("tokens", "labels", "loss_weights", "position_ids")
    )
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(input_ids=tokens, position_ids=positions).logits
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    want = float((ce * weights.flatten()).sum() / weights.sum())
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
