"""Every command in README.md works: the commands are read from the README itself and run on tiny inputs.

The README's walkthrough runs verbatim in a scratch directory that looks like the repository root (`tools/` and
`examples/` are links to ours) except for what the table below changes. `models/Meta-Llama-3-8B` there is a
tiny random Llama-3-like HF model (2 layers, width 64, rope_theta 500000, a byte-level BPE tokenizer.json with
`<|end_of_text|>` and `<|eot_id|>`) and `data/slimpajama/*.jsonl.gz` two small shards of synthetic text; the
recipe is the real examples/llama3_8b_endprompt_64k.yaml. A README command that no rule below recognises, or a
substituted flag whose README value changed, fails the test, so README and test cannot drift apart silently.
`make demo` / `make test` are checked against the Makefile, not run (the demo has tests/integration/test_demo.py
and `make test` would recurse).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from tests.readme_support.readme import fenced_blocks, make_targets, make_variables, read, shell_commands
from tests.readme_support.tiny_inputs import (
    MODEL_VOCAB,
    SPECIAL_TOKENS,
    corpus_documents,
    write_jsonl_gz_shards,
    write_tiny_llama3,
)

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

# ---- everything that differs from the README ------------------------------------------------------------------
FLAG_VALUES: dict[str, tuple[str, str]] = {  # flag: (value in the README, value run here)
    "--seq-length": ("8192", "128"),  # P
    "--target-length": ("65536", "1024"),  # T (same ratio T / P = 8 as the recipe's PI factor)
    "--workers": ("8", "1"),
    "--nproc-per-node": ("8", "1"),
    "--lengths": ("4096,16384,65536", "1024,2048"),  # the shortest lengths every listed task fits in
    "--samples": ("20", "2"),
}
TRAIN_OVERRIDES = [  # appended to the torchrun command: the 8B recipe trains the tiny model for 2 steps on CPU
    "--model.preset", "null",  # the architecture comes from checkpoint.init_from's endprompt_model.json
    "--precision.dtype", "fp32",
    "--recompute.granularity", "none",
    "--data.seq_length", FLAG_VALUES["--seq-length"][1],
    "--data.global_batch_size", "2",
    "--data.num_workers", "0",
    "--training.train_steps", "2",
    "--logging.log_interval", "1",
]  # fmt: skip
# The Python block loads the save root the walkthrough's training wrote instead of "runs/tiny".
PYTHON_BLOCK_CHECKPOINT = ("runs/tiny", "runs/llama3_8b_endprompt_64k")
# `sbatch --nodes N script args` runs as `DRY_RUN=1 SLURM_NNODES=N bash script args` (the script's dry-run mode);
# `python` is this interpreter, `torchrun` the one installed beside it; torchrun gets a free port via PET_MASTER_PORT.
# ----------------------------------------------------------------------------------------------------------------

# `docker ...` needs a Docker daemon and a GPU, neither of which exists here: test_docker_commands checks those
# commands statically (the Dockerfile's base image, the script the container runs) instead of running them.
STATIC_ONLY = ("docker",)

STAGES = {  # README command prefix -> stage name, in the README's order
    ("python", "tools/convert_checkpoint.py", "hf-to-megatron"): "convert",
    ("python", "tools/build_endprompt_data.py"): "build",
    ("python", "-m", "megatron_endprompt.train"): "dry_run",
    ("torchrun",): "train",
    ("sbatch",): "sbatch",
    ("python", "tools/convert_checkpoint.py", "megatron-to-hf"): "export",
    ("python", "tools/eval_long_context.py"): "eval",
}


@dataclass
class Step:
    """One README command: as written, and as run here."""

    stage: str
    readme_argv: list[str]
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def flag(self, name: str) -> str:
        """The value of `--name` in the command as run."""
        return self.argv[self.argv.index(name) + 1]


def _stage_of(argv: list[str]) -> str:
    for prefix, stage in STAGES.items():
        if tuple(argv[: len(prefix)]) == prefix:
            return stage
    raise AssertionError(f"README command not covered by tests/integration/test_readme.py: {' '.join(argv)}")


def _substitute_flags(argv: list[str], used: set[str]) -> list[str]:
    argv = list(argv)
    for flag, (readme_value, value) in FLAG_VALUES.items():
        if flag in argv:
            i = argv.index(flag) + 1
            assert argv[i] == readme_value, (
                f"README now has {flag} {argv[i]} (test expects {readme_value}): update FLAG_VALUES"
            )
            argv[i] = value
            used.add(flag)
    return argv


def _torchrun() -> list[str]:
    beside = Path(sys.executable).with_name("torchrun")
    return [str(beside)] if beside.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def _as_run(stage: str, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    if stage == "sbatch":
        assert argv[1] == "--nodes" and argv[3].endswith(".sh"), f"unsupported sbatch form: {argv}"
        return ["bash", *argv[3:]], {"DRY_RUN": "1", "SLURM_NNODES": argv[2], "PYTHON": sys.executable}
    if stage == "train":
        return [*_torchrun(), *argv[1:], *TRAIN_OVERRIDES], {"PET_MASTER_PORT": str(_free_port())}
    assert argv[0] == "python", argv
    return [sys.executable, *argv[1:]], {}


def walkthrough_steps(readme: str) -> list[Step]:
    """The README's bash commands other than `make ...`, mapped to stages and substituted as the table says."""
    steps, used = [], set()
    for block in fenced_blocks(readme):
        if block.language not in ("bash", "sh", "shell"):
            continue
        for argv in shell_commands(block.body):
            if argv[0] == "make":
                continue  # test_make_commands_exist
            if argv[0] in STATIC_ONLY:
                continue  # test_docker_commands
            stage = _stage_of(argv)
            run_argv, env = _as_run(stage, _substitute_flags(argv, used))
            steps.append(Step(stage, argv, run_argv, env))
    assert used == set(FLAG_VALUES), f"FLAG_VALUES entries no README command uses: {set(FLAG_VALUES) - used}"
    return steps


def python_blocks(readme: str) -> list[str]:
    blocks = [b.body for b in fenced_blocks(readme) if b.language == "python"]
    assert len(blocks) == 1, "README python blocks changed: extend test_python_block"
    return blocks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_scratch_root(root: Path) -> None:
    for name in ("tools", "examples"):
        (root / name).symlink_to(REPO / name, target_is_directory=True)
    documents = corpus_documents(300)
    write_jsonl_gz_shards(root / "data" / "slimpajama", documents)
    write_tiny_llama3(root / "models" / "Meta-Llama-3-8B", documents)


_LAUNCHER_VARS = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> dict:
    """Run the README's walkthrough once; every test below checks one stage's outcome."""
    root = tmp_path_factory.mktemp("readme")
    _make_scratch_root(root)
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}  # a fresh shell's view
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    outputs, seconds = {}, {}
    for step in walkthrough_steps(read(README)):
        start = time.perf_counter()
        proc = subprocess.run(
            step.argv, cwd=root, env={**env, **step.env}, capture_output=True, text=True, timeout=300
        )
        seconds[step.stage] = round(time.perf_counter() - start, 1)
        assert proc.returncode == 0, (
            f"README command failed ({step.stage}): {' '.join(step.readme_argv)}\nran: {' '.join(step.argv)}\n"
            + proc.stdout[-3000:]
            + proc.stderr[-5000:]
        )
        outputs[step.stage] = (step, proc.stdout + proc.stderr)
    print("README walkthrough seconds per stage:", seconds)
    return {"root": root, "outputs": outputs}


def _step(walkthrough: dict, stage: str) -> tuple[Step, str]:
    return walkthrough["outputs"][stage]


def test_make_commands_exist() -> None:
    """`make demo`, `make test` (and every other `make X` the README names) are Makefile targets that install
    first and run what the README says."""
    readme = read(README)
    targets = make_targets(read(REPO / "Makefile"))
    top = [argv for b in fenced_blocks(readme)[:1] for argv in shell_commands(b.body)]
    assert top == [["make", "demo"], ["make", "test"]]
    named = {word.split()[1] for word in re.findall(r"make [a-z][a-z-]*", readme)}
    assert named <= set(targets), f"README names make targets the Makefile lacks: {named - set(targets)}"
    python = make_variables(read(REPO / "Makefile"))["PYTHON"]
    install = targets["install"].recipe
    assert (
        len(install) == 1
        and install[0].startswith(f"{python} -m pip install")
        and '-e ".[dev]"' in install[0]
    )
    assert targets["demo"].prerequisites == ("install",) == targets["test"].prerequisites
    assert targets["demo"].recipe[0].startswith(f"{python} -m megatron_endprompt.demo")
    assert targets["demo-fast"].recipe == (f"{python} -m megatron_endprompt.demo --fast",)
    assert targets["test"].recipe[0].startswith(f"{python} -m pytest")
    assert "ruff check" in targets["lint"].recipe[0] and "ruff format --check" in targets["lint"].recipe[0]


def test_docker_commands() -> None:
    """The image builds from NGC PyTorch (TE + apex) and runs a script that exists in the repo."""
    docker = [
        argv
        for b in fenced_blocks(read(README))
        if b.language in ("bash", "sh", "shell")
        for argv in shell_commands(b.body)
        if argv[0] == "docker"
    ]
    assert [argv[1] for argv in docker] == ["build", "run"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "nvcr.io/nvidia/pytorch" in dockerfile and "pip install" in dockerfile
    run = docker[1]
    script = run[run.index("bash") + 1]
    assert (REPO / script).is_file(), f"README's docker run executes {script}, which does not exist"


def test_every_readme_command_is_covered() -> None:
    """The walkthrough maps onto the stages in the README's order (an unknown command raises)."""
    steps = walkthrough_steps(read(README))
    assert [s.stage for s in steps] == list(STAGES.values())
    python_blocks(read(README))


@pytest.mark.parametrize(
    "edit",
    [
        ("--seq-length 8192", "--seq-length 4096"),  # a substituted flag's README value changed
        ("--samples 20 --out", "--out"),  # a substituted flag disappeared
        ("```bash\n# 1.", "```bash\npython tools/new_tool.py --x 1\n# 1."),  # a command nobody runs
    ],
)
def test_readme_drift_fails(edit: tuple[str, str]) -> None:
    readme = read(README)
    assert edit[0] in readme
    with pytest.raises(AssertionError):
        walkthrough_steps(readme.replace(*edit))


def test_convert_hf_to_megatron(walkthrough) -> None:
    step, _ = _step(walkthrough, "convert")
    out = walkthrough["root"] / step.flag("--megatron-dir")
    cfg = json.loads((out / "endprompt_model.json").read_text())
    assert (cfg["num_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (2, 64, MODEL_VOCAB)
    assert cfg["rope_theta"] == 500000.0
    assert (out / "hf_assets" / "tokenizer.json").is_file()  # kept for the export


def test_build_endprompt_data(walkthrough) -> None:
    from megatron_endprompt.data import load_samples

    step, _ = _step(walkthrough, "build")
    prefix = walkthrough["root"] / step.flag("--output-prefix")
    for suffix in (".bin", ".idx", ".seg", ".meta.json"):
        assert Path(f"{prefix}{suffix}").stat().st_size > 0, suffix
    assert Path(f"{prefix}.coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # --report
    meta = json.loads(Path(f"{prefix}.meta.json").read_text())
    assert [c["spec"] for c in meta["cues"]] == [
        step.argv[i + 1] for i, a in enumerate(step.argv) if a == "--cue"
    ]
    assert meta["cues"][1]["tokens"] == [SPECIAL_TOKENS.index("<|eot_id|>")]  # @token: is the special token
    assert meta["tokenizer"]["eod"] == SPECIAL_TOKENS.index("<|end_of_text|>")  # --append-eod
    P, T = int(step.flag("--seq-length")), int(step.flag("--target-length"))
    sample = load_samples(str(prefix))[0]
    assert sample["tokens"].shape == (P,)
    assert sample["position_ids"][0] == 0 and sample["position_ids"][-1] == T - 1  # the cue ends the window


def test_dry_run_prints_the_layout(walkthrough) -> None:
    _, out = _step(walkthrough, "dry_run")
    assert "world 8 = TP 1 x PP 1 x CP 1 x DP 8" in out and "8.03 Gparams" in out
    assert (
        "tokens/step" in out and "GFLOP/token" in out and "memory per GPU" in out
    )  # what the README promises


def test_training_wrote_checkpoint_and_metrics(walkthrough) -> None:
    step, _ = _step(walkthrough, "train")
    recipe = yaml.safe_load((REPO / step.flag("--config")).read_text())
    save = walkthrough["root"] / recipe["checkpoint"]["save"]
    assert (save / "latest").read_text().strip() == "iter_0000002"
    assert (save / "iter_0000002").is_dir()
    metrics = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)


def test_sbatch_dry_run_prints_the_multi_node_layout(walkthrough) -> None:
    step, out = _step(walkthrough, "sbatch")
    nodes = int(step.readme_argv[step.readme_argv.index("--nodes") + 1])
    world = nodes * 8  # GPUS_PER_NODE default
    assert f"world {world} = TP 1 x PP 1 x CP 1 x DP {world}" in out


def test_hf_export_loads_with_transformers(walkthrough) -> None:
    from transformers import AutoModelForCausalLM

    step, _ = _step(walkthrough, "export")
    hf_dir = walkthrough["root"] / step.flag("--hf-dir")
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    assert model.config.rope_scaling["rope_type"] == "linear" and model.config.rope_scaling["factor"] == 8.0
    assert model.config.max_position_embeddings == 65536 and (hf_dir / "tokenizer.json").is_file()
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 13]])).logits
    assert logits.shape == (1, 4, MODEL_VOCAB) and torch.isfinite(logits).all()


def test_eval_wrote_results(walkthrough) -> None:
    step, _ = _step(walkthrough, "eval")
    out = walkthrough["root"] / step.flag("--out")
    results = json.loads((out / "results.json").read_text())
    tasks, lengths = step.flag("--tasks").split(","), step.flag("--lengths").split(",")
    assert list(results["results"]) == tasks
    for per_length in results["results"].values():
        assert list(per_length) == lengths and all(0.0 <= v <= 100.0 for v in per_length.values())
    assert (out / "results.md").is_file() and any(out.glob("heatmap_*.png"))


def test_python_block(walkthrough, monkeypatch) -> None:
    """The README's Python snippet on the checkpoint the walkthrough trained; its logits match the HF export."""
    from transformers import AutoModelForCausalLM

    from megatron_endprompt import load_model

    # the signature the README states below the block
    stated = re.search(r"`load_model\((.*?)\)`", read(README)).group(1)
    params = inspect.signature(load_model).parameters.values()
    actual = [p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params]
    assert stated == ", ".join(actual)
    old, new = PYTHON_BLOCK_CHECKPOINT
    (source,) = python_blocks(read(README))
    assert f'"{old}"' in source
    monkeypatch.chdir(walkthrough["root"])
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(source.replace(f'"{old}"', f'"{new}"'), "README.md", "exec"), namespace)
    model, ids = namespace["model"], namespace["ids"]
    assert namespace["logits"].shape == (1, 4, MODEL_VOCAB)
    assert "ModelConfig(" in printed.getvalue() and "linear" in printed.getvalue()
    step, _ = _step(walkthrough, "export")
    hf = AutoModelForCausalLM.from_pretrained(walkthrough["root"] / step.flag("--hf-dir")).eval()
    positions = torch.tensor([[0, 1, 65534, 65535]])
    with torch.no_grad():
        for pos in (None, positions):
            ours = model(ids) if pos is None else model(ids, position_ids=pos)
            theirs = hf(ids, position_ids=pos).logits
            assert (ours - theirs).abs().max() < 1e-4
