"""The Dockerfile's steps replayed outside Docker (there is no Docker daemon here, and the NGC base image is not
reachable): WORKDIR, ENV, every COPY and every RUN, in order, in a virtual environment that sees this machine's
packages and may not download anything. This checks that every COPY source exists, that the dependency layer
installs from the packaging files alone, and that the final install and its import check pass. It cannot check
the NGC image's own torch / Transformer Engine builds or its pip constraints; that needs a real `docker build`."""

import os
import shlex
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        word, _, args = (pending + stripped).partition(" ")
        out.append((word.upper(), args.strip()))
        pending = ""
    return out


def docker_context() -> list[str]:
    """The files `COPY . .` sends: the tracked ones (.dockerignore leaves out only untracked build output)."""
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    return [f for f in listed.stdout.splitlines() if (REPO / f).is_file()]


def copy_into(workdir: Path, args: str) -> None:
    *sources, dest = shlex.split(args)
    target = workdir / dest
    for source in sources:
        if source == ".":
            for rel in docker_context():
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, target / rel)
            continue
        assert (REPO / source).is_file(), f"Dockerfile: COPY {source}: no such file in the repo"
        into = target / Path(source).name if dest.endswith("/") else target
        into.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / source, into)


def test_instructions_are_parsed_with_their_continuations() -> None:
    text = '# c\nARG A=1\nRUN a \\\n    && b\n\nCMD ["bash"]\n'
    assert instructions(text) == [("ARG", "A=1"), ("RUN", "a  && b"), ("CMD", '["bash"]')]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to list the build context")
def test_dockerfile_steps_replay_in_a_virtual_environment(tmp_path) -> None:
    steps = instructions((REPO / "Dockerfile").read_text())
    base = dict(a.split("=", 1) for op, a in steps if op == "ARG")["BASE_IMAGE"]
    assert base.startswith("nvcr.io/nvidia/pytorch:") and ("FROM", "${BASE_IMAGE}") in steps
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    # pip from this interpreter runs inside the venv (`python -m pip` there finds it through the system path)
    assert subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}", "PIP_NO_INDEX": "1"}
    env.pop("PYTHONPATH", None)  # the import check must find the package through its install alone
    workdir, ran = tmp_path / "root", []
    for op, args in steps:
        if op == "WORKDIR":
            workdir = tmp_path / "root" / args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif op == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
        elif op == "COPY":
            copy_into(workdir, args)
        elif op == "RUN":
            proc = subprocess.run(["bash", "-c", args], cwd=workdir, env=env, capture_output=True, text=True)
            assert proc.returncode == 0, (
                f"Dockerfile: RUN {args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
            ran.append(proc.stdout)
    assert len(ran) == 2 and "megatron-core 0.16" in ran[-1]
    where = subprocess.run(
        [python, "-c", "import megatron_endprompt; print(megatron_endprompt.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(workdir)), (
        "the image's package must be the copied tree, not the checkout"
    )
