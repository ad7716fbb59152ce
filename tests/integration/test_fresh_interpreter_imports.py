"""What a fresh interpreter imports: the position schemes need no torch, and the training entry point refuses an
invalid layout before it imports torch or megatron-core."""

import subprocess
import sys
import textwrap


def test_positions_does_not_import_torch():
    code = "import sys, megatron_endprompt.positions; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_rejects_invalid_layout_before_importing_torch() -> None:
    """The entry point validates before any compute: exit code 2, the flag named, torch never imported."""
    code = textwrap.dedent(
        """
        import sys
        from megatron_endprompt.train import main
        rc = main(["--model.preset", "tiny", "--data.mock", "--training.train_steps", "3",
                   "--parallel.tensor_parallel", "2"])
        assert "torch" not in sys.modules and "megatron.core" not in sys.modules, "imported compute libraries"
        sys.exit(rc)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "--parallel.tensor_parallel" in proc.stderr and "world size 1" in proc.stderr
