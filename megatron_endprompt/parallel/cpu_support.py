"""Make megatron-core 0.16.1 run on CPU with gloo. Does nothing when CUDA is available.

This is the ONLY place where megatron-core is patched. Every patch is narrow, idempotent and listed here
(tests in tests/unit/test_cpu_support.py, which also trains through megatron's DDP, optimizer, clip-grad,
recompute and schedule; pipeline p2p paths in tests/distributed/test_cp_attention.py):

1. RNG (`tensor_parallel/random.py`): the CUDA RNG tracker becomes `CpuRNGStatesTracker`, which tracks CPU
   generator states under the same names and seeds (`model_parallel_cuda_manual_seed` keeps its seed
   offsets: data-parallel `seed`, tensor-parallel `seed + 2718 + tp_rank`, expert `seed + 1024 + ...`);
   `_get_cuda_rng_state` / `_set_cuda_rng_state` (used by activation recomputation) read/write the CPU RNG.
2. CUDA calls inside a fixed list of megatron modules (`_CUDA_MODULES`): their module-global `torch` is
   replaced by a proxy that forwards everything to torch except
   - `torch.cuda.current_device()` -> `torch.device("cpu")`, `synchronize` / `empty_cache` -> no-ops,
     `is_available()` -> False;
   - factory functions (`zeros`, `ones`, `empty`, `full`, `tensor`, `arange`, `randn`, `rand`) given
     `device="cuda"` (or a CUDA device) allocate on the CPU instead.
   This covers GlobalMemoryBuffer (`utils.py`), the default causal mask (`transformer/utils.py`), rotary
   `inv_freq` moved to `current_device()`, pipeline schedules' token counters and p2p receive buffers,
   DDP grad buffers, optimizer scalars, grad scaler and clip-grad buffers, tensor-parallel layers /
   mappings / utils / `broadcast_data`, timers, the inference KV-cache allocation in attention.
3. Type checks `param.type() == 'torch.cuda.FloatTensor'` and `Tensor.cuda()` inside a fixed list of
   functions (`_TYPE_CHECKED`): while those functions run, `Tensor.type()` without arguments reports CPU
   tensors under their CUDA names and `Tensor.cuda()` returns the tensor itself.
4. Transformer Engine installed without a CUDA device (a CPU login node, the NGC image without a driver):
   megatron-core chose TE's fused Adam and multi-tensor kernels when it imported TE (`optimizer/__init__.py`,
   `optimizer/optimizer.py`, `optimizer/clip_grads.py`, `optimizer/distrib_optimizer.py`) and TE's norm as a
   block's default final norm (`transformer/transformer_block.py`, `LayerNormImpl`); they need CUDA.
   Their module-level choices are set to what megatron picks without TE: torch AdamW / Adam, megatron's
   local multi-tensor implementations and its torch norm (logged once). The layer spec follows the same rule
   (`model.te_choice`: TE only when importable AND a CUDA device is present).
5. `cpu_safe_checkpointing()`: a context manager, not a global patch, around megatron's dist_checkpointing
   calls (training's checkpoints and the converters): `torch.cuda.synchronize` / `current_device` /
   `Tensor.cuda` stand-ins for the duration of one save or load.

Scope: `apply()` runs from `parallel.initialize` only when `torch.cuda.is_available()` is False, and
`cpu_safe_checkpointing` is a no-op with CUDA, so nothing here touches a CUDA run. The patches 1-3 are
process-wide once applied (megatron reads these module globals at call time; a CPU process never has CUDA).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import sys
import types

import torch

logger = logging.getLogger(__name__)

_APPLIED = False

_CUDA_MODULES = (
    "megatron.core.utils",
    "megatron.core.transformer.utils",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.models.common.embeddings.rope_utils",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.transformer.transformer_layer",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.utils",
    "megatron.core.tensor_parallel.data",
    "megatron.core.transformer.attention",
    "megatron.core.timers",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.grad_scaler",
)

# (module, qualified name) of functions that compare `Tensor.type()` with CUDA type names or call `.cuda()`.
_TYPE_CHECKED = (
    ("megatron.core.optimizer.optimizer", "Float16OptimizerWithFloat16Params.__init__"),
    ("megatron.core.optimizer.distrib_optimizer", "DistributedOptimizer._build_model_and_main_param_groups"),
    ("megatron.core.optimizer.distrib_optimizer", "DistributedOptimizer.__init__"),
    ("megatron.core.optimizer.clip_grads", "clip_grad_by_total_norm_fp32"),
    ("megatron.core.tensor_parallel.data", "broadcast_data"),
    ("megatron.core.models.common.language_module.language_module",
     "LanguageModule.setup_embeddings_and_output_layer"),
)  # fmt: skip

_FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange", "randn", "rand")


def _is_cuda_device(device) -> bool:
    if device is None:
        return False
    if isinstance(device, int):
        return True  # a bare index means a CUDA ordinal
    return torch.device(device).type == "cuda"


def _cpu_factory(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return fn(*args, **kwargs)

    return wrapper


class _CpuCuda(types.SimpleNamespace):
    """Stands in for `torch.cuda` inside patched megatron modules."""

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


def _make_cpu_cuda() -> _CpuCuda:
    return _CpuCuda(
        current_device=lambda: torch.device("cpu"),
        synchronize=lambda *a, **k: None,
        empty_cache=lambda: None,
        is_available=lambda: False,
    )


class _TorchProxy(types.ModuleType):
    """Forwards to `torch`, except `torch.cuda` and device-taking factories (see module docstring)."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.cuda = _make_cpu_cuda()
        for name in _FACTORIES:
            setattr(self, name, _cpu_factory(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)


# ---------------------------------------------------------------- RNG tracker


def _make_cpu_tracker_class():
    from megatron.core.tensor_parallel import random as mrandom

    class CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        """Megatron's named RNG-state tracker, for the CPU generator."""

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    return CpuRNGStatesTracker


def _patch_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    tracker_cls = _make_cpu_tracker_class()
    mrandom.CudaRNGStatesTracker = tracker_cls  # initialize_rng_tracker() instantiates this name
    mrandom._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(
        new_state
    )
    # Any tracker created before apply() is a CUDA one: drop it so the next use builds a CPU tracker.
    mrandom.initialize_rng_tracker(force_reset=True)


# ---------------------------------------------------------------- type checks


_TYPE_SHIM_DEPTH = 0


@contextlib.contextmanager
def _cuda_type_names():
    """Report CPU tensors under CUDA type names and make `.cuda()` a no-op, for the duration (reentrant)."""
    global _TYPE_SHIM_DEPTH
    if _TYPE_SHIM_DEPTH:
        _TYPE_SHIM_DEPTH += 1
        try:
            yield
        finally:
            _TYPE_SHIM_DEPTH -= 1
        return
    orig_type, orig_cuda = torch.Tensor.type, torch.Tensor.cuda

    def type_(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs:
            name = orig_type(self)
            return name.replace("torch.", "torch.cuda.", 1) if self.device.type == "cpu" else name
        return orig_type(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = type_
    torch.Tensor.cuda = lambda self, *a, **k: self
    _TYPE_SHIM_DEPTH = 1
    try:
        yield
    finally:
        _TYPE_SHIM_DEPTH = 0
        torch.Tensor.type, torch.Tensor.cuda = orig_type, orig_cuda


def _wrap_type_checked(fn):
    if getattr(fn, "_endprompt_cpu", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _cuda_type_names():
            return fn(*args, **kwargs)

    wrapper._endprompt_cpu = True
    return wrapper


def _patch_type_checks() -> None:
    for module_name, qualname in _TYPE_CHECKED:
        module = importlib.import_module(module_name)
        owner_name, _, attr = qualname.rpartition(".")
        owner = getattr(module, owner_name) if owner_name else module
        raw = owner.__dict__[attr] if owner_name else getattr(owner, attr)
        if isinstance(raw, classmethod):
            setattr(owner, attr, classmethod(_wrap_type_checked(raw.__func__)))
        elif isinstance(raw, staticmethod):
            setattr(owner, attr, staticmethod(_wrap_type_checked(raw.__func__)))
        else:
            wrapped = _wrap_type_checked(raw)
            setattr(owner, attr, wrapped)
            if not owner_name:
                _rebind_imported(raw, wrapped)


def _rebind_imported(original, replacement) -> None:
    """Replace `from x import f` copies of a module-level function in loaded megatron modules."""
    for name, module in list(sys.modules.items()):
        if not name.startswith("megatron.core") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if value is original:
                setattr(module, attr, replacement)


# ---------------------------------------------------------------- Transformer Engine without CUDA


def _fall_back_from_transformer_engine() -> bool:
    """Rebind megatron's optimizer modules from TE's CUDA kernels to torch / megatron's local ones.

    Returns True when something was rebound (TE was importable), False when megatron already uses torch.
    """
    from megatron.core import optimizer as mopt
    from megatron.core import utils as mutils
    from megatron.core.optimizer import clip_grads, distrib_optimizer
    from megatron.core.optimizer import optimizer as mopt_optimizer
    from megatron.core.transformer import transformer_block
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    if mopt.USING_PYTORCH_OPTIMIZER and not transformer_block.HAVE_TE:
        return False
    # The final norm of a TransformerBlock built from a layer spec (e.g. an upstream GPTModel): TENorm.
    transformer_block.LayerNormImpl = WrappedTorchNorm
    mopt.Adam, mopt.SGD, mopt.USING_PYTORCH_OPTIMIZER = torch.optim.AdamW, torch.optim.SGD, True
    distrib_optimizer.Adam = torch.optim.Adam
    distrib_optimizer.HAVE_APEX_OR_TE = False
    distrib_optimizer.USING_TE_OPTIMIZER = distrib_optimizer.USING_APEX_OPTIMIZER = False
    mopt_optimizer.multi_tensor_applier = mutils.local_multi_tensor_applier
    mopt_optimizer.multi_tensor_scale_impl = mutils.local_multi_tensor_scale
    clip_grads.multi_tensor_applier = mutils.local_multi_tensor_applier
    clip_grads.l2_norm_impl = mutils.local_multi_tensor_l2_norm
    clip_grads.multi_tensor_scale_impl = mutils.local_multi_tensor_scale
    logger.info(
        "optimizer: torch AdamW and megatron's local multi-tensor kernels (Transformer Engine is installed, "
        "but its fused Adam needs a CUDA device)"
    )
    return True


# ---------------------------------------------------------------- dist_checkpointing


@contextlib.contextmanager
def cpu_safe_checkpointing():
    """Without CUDA, scoped stand-ins for the CUDA calls megatron-core makes while checkpointing on CPU
    (training's saves and loads, the converters'); nothing changes with CUDA.

    megatron-core 0.16.1 calls `torch.cuda.synchronize()` (`strategies/filesystem_async.py`, preload_tensors)
    and `torch.cuda.current_device()` (`strategies/state_dict_saver.py`, save finalisation) on every save, and
    the fp16 grad scaler's load_state_dict moves its scale with `Tensor.cuda()` (`optimizer/grad_scaler.py`).
    Those live outside `_CUDA_MODULES` (torch's own namespace), so they are swapped for the duration of one call
    only: `synchronize` a no-op, `current_device` the CPU device, `Tensor.cuda` the identity.
    """
    if torch.cuda.is_available():
        yield
        return
    saved = torch.cuda.synchronize, torch.cuda.current_device, torch.Tensor.cuda
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.cuda.synchronize, torch.cuda.current_device, torch.Tensor.cuda = saved


# ---------------------------------------------------------------- entry point


def apply() -> bool:
    """Install the CPU patches once; returns True when they are (or already were) active."""
    global _APPLIED
    if torch.cuda.is_available():
        return False
    if _APPLIED:
        return True
    for module_name in _CUDA_MODULES:
        module = importlib.import_module(module_name)
        if not isinstance(getattr(module, "torch", None), _TorchProxy):
            module.torch = _TorchProxy()
    _patch_rng()
    _patch_type_checks()
    _fall_back_from_transformer_engine()
    _APPLIED = True
    logger.debug("megatron-core CPU support applied")
    return True


def is_applied() -> bool:
    return _APPLIED
