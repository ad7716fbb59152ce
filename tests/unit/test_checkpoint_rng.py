"""RNG state files without pickle: every stream round-trips exactly; a planted pickle is refused, not run."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_endprompt.training import checkpoint_rng


def _state() -> dict:
    random.seed(3)
    random.gauss(0, 1)  # a cached gaussian in python's state
    np.random.seed(4)
    np.random.standard_normal()  # and in numpy's
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": None,
        "tracker": {"model-parallel-rng": torch.Generator().manual_seed(5).get_state()},
    }


def test_rng_state_round_trips_every_stream(tmp_path):
    want = _state()
    checkpoint_rng.write(tmp_path / "rank_00000.safetensors", want)
    got = checkpoint_rng.read(tmp_path / "rank_00000.safetensors")
    assert got["python"] == want["python"]
    kind, keys, pos, has_gauss, cached = got["numpy"]
    assert keys.dtype == np.uint32 and np.array_equal(keys, want["numpy"][1])
    assert (kind, pos, has_gauss, cached) == (want["numpy"][0], *want["numpy"][2:])
    assert torch.equal(got["torch"], want["torch"]) and got["cuda"] is None
    assert torch.equal(got["tracker"]["model-parallel-rng"], want["tracker"]["model-parallel-rng"])
    random.setstate(got["python"])  # the states are accepted by the generators themselves
    np.random.set_state(got["numpy"])
    assert random.random() == (random.setstate(want["python"]), random.random())[1]


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


@pytest.mark.parametrize("dump", [pickle.dumps, lambda obj: _torch_save_bytes(obj)])
def test_planted_pickle_rng_file_is_refused_without_running(tmp_path, dump):
    proof = tmp_path / "payload_ran"
    file = tmp_path / "rank_00000.safetensors"
    file.write_bytes(dump(_Payload(str(proof))))
    with pytest.raises(checkpoint_rng.RngStateError, match=str(file)):
        checkpoint_rng.read(file)
    assert not proof.exists()


def _torch_save_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
