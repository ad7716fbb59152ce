"""Each CPU patch of megatron-core (parallel/cpu_support.py), then a full single-process training step
through megatron's DDP, optimizer, clip-grad and schedule on CPU."""

from __future__ import annotations

import pytest
import torch

from megatron_endprompt.parallel import cpu_support, initialize

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU support is inactive on CUDA")


@pytest.fixture(scope="module", autouse=True)
def _single_process():
    initialize(tp=1, pp=1, cp=1, seed=1234)


def test_apply_is_idempotent_and_proxies_modules():
    import megatron.core.pipeline_parallel.schedules as schedules

    proxy = schedules.torch
    assert cpu_support.apply() and cpu_support.apply()
    assert schedules.torch is proxy and isinstance(proxy, cpu_support._TorchProxy)
    assert proxy.cuda.current_device() == torch.device("cpu")
    assert proxy.zeros([], device="cuda").device.type == "cpu"
    assert proxy.tensor([1.0], device=torch.device("cuda")).device.type == "cpu"
    assert proxy.Tensor is torch.Tensor  # everything else is forwarded


def test_rng_tracker_is_cpu_with_megatron_seed_offsets():
    from megatron.core.tensor_parallel import get_cuda_rng_tracker
    from megatron.core.tensor_parallel.random import _MODEL_PARALLEL_RNG_TRACKER_NAME

    tracker = get_cuda_rng_tracker()
    assert type(tracker).__name__ == "CpuRNGStatesTracker"
    before = torch.get_rng_state()
    with tracker.fork():
        drawn = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)  # the default stream is untouched
    expected = torch.rand(4, generator=torch.Generator().manual_seed(1234 + 2718))  # tp rank 0
    assert torch.equal(drawn, expected)
    with tracker.fork(_MODEL_PARALLEL_RNG_TRACKER_NAME):
        assert not torch.equal(torch.rand(4), drawn)  # the tracked stream advanced


def test_global_memory_buffer_and_causal_mask_on_cpu():
    from megatron.core import parallel_state
    from megatron.core.transformer.utils import get_default_causal_mask

    buf = parallel_state.get_global_memory_buffer().get_tensor([3, 5], torch.float32, "test")
    assert buf.shape == (3, 5) and buf.device.type == "cpu"
    mask = get_default_causal_mask(4)
    assert mask.device.type == "cpu" and mask.tolist()[0] == [False, True, True, True]


def test_rotary_embedding_inv_freq_stays_on_cpu():
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    rope = RotaryEmbedding(kv_channels=16, rotary_percent=1.0, use_cpu_initialization=True)
    assert rope(8).device.type == "cpu"


def test_type_names_only_inside_wrapped_functions():
    from megatron.core.optimizer import optimizer as moptimizer
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    assert p.grad.type() == "torch.FloatTensor"  # unchanged outside
    # upstream asserts grad.type() == 'torch.cuda.FloatTensor' in here; the copy imported by optimizer.py too
    assert moptimizer.clip_grad_by_total_norm_fp32 is clip_grad_by_total_norm_fp32
    clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=5.0)
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8, 0.0]), rtol=1e-5, atol=1e-6)
    assert p.grad.type() == "torch.FloatTensor"
    assert torch.ones(1).type(torch.float64).dtype == torch.float64


def test_broadcast_data_and_grad_scaler_on_cpu():
    from megatron.core.optimizer.grad_scaler import DynamicGradScaler
    from megatron.core.tensor_parallel import broadcast_data

    data = {"tokens": torch.arange(6).view(2, 3)}
    out = broadcast_data(["tokens"], data, torch.int64)
    assert torch.equal(out["tokens"], data["tokens"]) and out["tokens"].device.type == "cpu"
    scaler = DynamicGradScaler(2.0**8, 1.0, 2.0, 0.5, 10, 2)
    scaler.update(found_inf=True)
    scaler.update(found_inf=True)  # hysteresis 2: the second overflow backs off
    assert scaler.scale.item() == 2.0**7 and scaler.scale.device.type == "cpu"


def _train_steps(use_distributed_optimizer: bool, recompute: str | None, steps: int = 3) -> list[float]:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_endprompt.model.config import get_preset
    from megatron_endprompt.model.gpt import build_model

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    model = build_model(cfg, recompute=recompute)
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=use_distributed_optimizer
    )
    model = DistributedDataParallel(model.config, ddp_cfg, model)
    opt = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-2, clip_grad=1.0, bf16=False,
                        use_distributed_optimizer=use_distributed_optimizer),
        [model],
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (2, 32), generator=g)
    positions = torch.stack([torch.arange(32), torch.cat([torch.arange(16), torch.arange(60000, 60016)])])

    def forward_step(data_iterator, module):
        batch = next(data_iterator)
        losses = module(batch["tokens"], batch["position_ids"], labels=batch["tokens"])

        def loss_func(per_token):
            loss = per_token.float().mean()
            return loss, {"loss": loss.detach().clone()}

        return losses, loss_func

    fwd_bwd = get_forward_backward_func()
    history = []
    for _ in range(steps):
        model.zero_grad_buffer()
        opt.zero_grad()
        out = fwd_bwd(
            forward_step_func=forward_step,
            data_iterator=iter([{"tokens": tokens, "position_ids": positions}] * 2),
            model=[model],
            num_microbatches=2,
            seq_length=32,
            micro_batch_size=2,
            forward_only=False,
        )
        ok, grad_norm, _ = opt.step()
        assert ok and grad_norm > 0
        history.append(sum(o["loss"].item() for o in out) / len(out))
    return history


@pytest.mark.parametrize(
    "dist_opt,recompute",
    [(False, None), (True, "full"), (False, "selective")],
    ids=["ddp-adam", "distopt-recompute-full", "recompute-selective"],
)
def test_training_step_with_megatron_ddp_optimizer_schedule(dist_opt, recompute):
    history = _train_steps(dist_opt, recompute)
    assert history[-1] < history[0]
