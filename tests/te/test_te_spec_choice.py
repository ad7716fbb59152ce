"""With the REAL Transformer Engine installed and no CUDA device: what the project chooses, and the RoPE guard.

- TE is used only with a CUDA device: auto picks the local spec here, and megatron's import-time TE choices
  (fused Adam, multi-tensor kernels, a block's default final norm) are replaced by torch / local ones.
- With the device check answering yes, auto picks megatron's real TE layer spec.
- Per-sample [s, b, 1, d] RoPE frequencies never reach a fused kernel under the TE spec: megatron accepts
  `apply_rope_fusion=True` once TE is installed, our build refuses it, and the TE-spec attention's RoPE call
  runs the unfused maths.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip(
    "transformer_engine.pytorch",
    reason="Transformer Engine is not installed (bash tools/te_cpu_venv.sh builds a venv with it)",
)

from megatron_endprompt.model import te_choice  # noqa: E402
from megatron_endprompt.model.config import get_preset  # noqa: E402
from megatron_endprompt.model.gpt import build_model, to_transformer_config  # noqa: E402
from megatron_endprompt.model.specs import layer_spec  # noqa: E402
from megatron_endprompt.parallel import initialize  # noqa: E402
from tests.te.te_support import te_on_cpu  # noqa: E402

pytestmark = pytest.mark.te


@pytest.fixture(scope="module", autouse=True)
def _single_process():
    initialize(tp=1, pp=1, cp=1, seed=1234)


def test_auto_is_local_without_cuda_and_te_with_it() -> None:
    from megatron.core.extensions.transformer_engine import TELayerNormColumnParallelLinear

    from megatron_endprompt.model.attention import SDPAttention

    assert te_choice.te_installed() and not torch.cuda.is_available()
    assert te_choice.resolve_use_te(None) is False
    assert layer_spec(None).submodules.self_attention.submodules.core_attention is SDPAttention
    with pytest.raises(ValueError, match="--model.use_te true: .*no CUDA device"):
        te_choice.resolve_use_te(True)
    with te_on_cpu():
        spec = layer_spec(None)
    assert spec.submodules.self_attention.submodules.linear_qkv is TELayerNormColumnParallelLinear


def test_megatron_import_time_te_choices_are_replaced_without_cuda() -> None:
    from megatron.core import optimizer as mopt
    from megatron.core.optimizer import clip_grads
    from megatron.core.transformer import transformer_block
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.utils import local_multi_tensor_l2_norm

    assert transformer_block.HAVE_TE, "megatron did not import Transformer Engine: nothing was tested"
    assert mopt.Adam is torch.optim.AdamW and mopt.USING_PYTORCH_OPTIMIZER
    assert clip_grads.l2_norm_impl is local_multi_tensor_l2_norm
    assert transformer_block.LayerNormImpl is WrappedTorchNorm


def test_engine_trains_a_step_where_te_is_installed() -> None:
    """The default route (auto spec, megatron's optimizer) trains on CPU with TE installed."""
    from megatron_endprompt.training.config import from_dict
    from megatron_endprompt.training.engine import Engine

    cfg = from_dict(
        {
            "model": {"preset": "tiny"},
            "precision": {"dtype": "fp32"},
            "optimizer": {"lr": 1e-3, "warmup_steps": 0},
            "data": {"seq_length": 16, "micro_batch_size": 2, "global_batch_size": 2, "mock": True},
            "training": {"train_steps": 2},
        }
    )
    engine = Engine(cfg)
    inner = engine.optimizer.optimizer
    assert isinstance(inner, torch.optim.AdamW), type(inner)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    batch = {"tokens": ids, "labels": ids.roll(-1, 1), "loss_weights": torch.ones(2, 16),
             "position_ids": torch.arange(16).expand(2, 16).contiguous()}  # fmt: skip
    result = engine.train_step([batch])
    assert torch.isfinite(torch.tensor(result.loss)) and result.grad_norm > 0


def _te_model(**config_changes):
    cfg = get_preset("tiny")
    config = to_transformer_config(cfg, params_dtype=torch.float32)
    for name, value in config_changes.items():
        setattr(config, name, value)
    with te_on_cpu():
        return build_model(cfg, use_te=True, config=config)


def test_fused_rope_refused_under_te_spec() -> None:
    from megatron.core.transformer.transformer_config import TransformerConfig

    # Megatron itself accepts the fusion once TE is installed: only our guard stands in the way.
    TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, apply_rope_fusion=True)
    with pytest.raises(ValueError, match="apply_rope_fusion=True: megatron's fused RoPE"):
        _te_model(apply_rope_fusion=True)


def test_per_sample_freqs_take_the_unfused_path_under_te_spec(monkeypatch) -> None:
    """The TE-spec attention's RoPE call with batch-varying frequencies: unfused maths, per sample."""
    from megatron.core.models.common.embeddings import rope_utils
    from megatron.core.transformer.attention import SelfAttention

    def refuse(*args, **kwargs):
        raise AssertionError("per-sample frequencies reached a fused RoPE kernel")

    for name in ("fused_apply_rotary_pos_emb", "fused_apply_rotary_pos_emb_thd"):
        if hasattr(rope_utils, name):
            monkeypatch.setattr(rope_utils, name, refuse)
    model = _te_model()
    attentions = [m for m in model.modules() if isinstance(m, SelfAttention)]
    assert attentions and all(a.config.apply_rope_fusion is False for a in attentions)
    s, b, h, d = 6, 2, 4, 16
    t = torch.randn(s, b, h, d, generator=torch.Generator().manual_seed(1))
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 2, 65533, 65534, 65535]], dtype=torch.float32)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = positions.T[:, :, None] * inv_freq  # [s, b, d/2]
    freqs = torch.cat([angles, angles], dim=-1)[:, :, None, :]  # [s, b, 1, d]
    out = rope_utils.apply_rotary_pos_emb(t, freqs, config=attentions[0].config)
    half = torch.cat([-t[..., d // 2 :], t[..., : d // 2]], dim=-1)
    expected = t * freqs.cos() + half * freqs.sin()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
