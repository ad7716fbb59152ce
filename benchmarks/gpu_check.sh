#!/usr/bin/env bash
# One prepared GPU check for a short session on a CUDA machine (at most 8 minutes on one H100/H200: the step
# time limits below add up to 480 s; results are written as they come, so a timeout keeps what was measured).
#
#   OUT=/path/to/results bash benchmarks/gpu_check.sh           # on the GPU machine, from the repo root
#   GPU_CHECK_SMOKE=1 OUT=/tmp/gc bash benchmarks/gpu_check.sh  # CPU rehearsal: same wiring, tiny sizes
#
# Steps (each under its own timeout; a failing step is recorded and the next one still runs):
#   1. environment: GPU, driver, torch / CUDA / cuDNN / Triton versions, SDPA backends available
#   2. missing packages installed offline from ./.whl (see benchmarks/prepare_gpu_wheels.sh)
#   3. GPU tests (pytest -m gpu, 120 s): bf16 parity of our model vs HF transformers with EndPrompt positions up
#      to 64K under the default / cuDNN / flash / math SDPA backends, fp32 parity, the reference model's parity,
#      the Triton and torch.compile RoPE vs the unfused path, chunked cross entropy in bf16, forced backends
#   4. throughput table (benchmarks/train_throughput.py, 270 s): EndPrompt P=8K vs full 64K, per-token vs
#      megatron contiguous RoPE, fused (Triton / compile) vs unfused RoPE, cuDNN vs flash, chunked CE on/off at
#      8K and 64K, ours vs the plain-PyTorch reference, activation memory per case, and the "Targets" table
#   5. the training CLI on CUDA in bf16 (tiny recipe, mock data), default knobs and fast knobs (chunked CE,
#      Triton RoPE, cuDNN attention): loss must fall in both (45 s each)
# Everything lands in $OUT: env.json, *.log, gpu_tests.xml, throughput/results.{json,md}, summary.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
SMOKE=${GPU_CHECK_SMOKE:-0}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
declare -A STATUS
SECONDS=0

step() {  # step NAME TIMEOUT_S CMD...: run, log to $OUT/NAME.log, record status and time
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "=== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  STATUS[$name]="exit $rc after $((SECONDS - start))s"
  echo "=== $name: ${STATUS[$name]}"
  tail -n 15 "$OUT/$name.log"
}

# ---- 1. environment
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" >"$OUT/nvidia-smi.txt"
python - >"$OUT/env.json" <<'EOF'
import json, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available()}
try:
    import triton
    info["triton"] = triton.__version__
except Exception as exc:  # noqa: BLE001 - report anything
    info["triton"] = f"missing ({type(exc).__name__})"
if torch.cuda.is_available():
    info.update(device=torch.cuda.get_device_name(0), capability=torch.cuda.get_device_capability(0),
                cudnn=torch.backends.cudnn.version(),
                sdpa={"flash": torch.backends.cuda.flash_sdp_enabled(), "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                      "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                      "math": torch.backends.cuda.math_sdp_enabled()})
for mod in ("megatron.core", "transformers", "transformer_engine", "sentencepiece", "yaml"):
    try:
        m = __import__(mod, fromlist=["_"])
        info[mod] = getattr(m, "__version__", "present")
    except Exception as exc:  # noqa: BLE001 - report anything
        info[mod] = f"missing ({type(exc).__name__})"
print(json.dumps(info, indent=1))
EOF
cat "$OUT/env.json"

# ---- 2. offline installs of what is missing (the machine has no internet)
for pair in megatron.core:megatron-core transformers:transformers sentencepiece:sentencepiece yaml:pyyaml \
            safetensors:safetensors psutil:psutil; do
  mod=${pair%%:*} pkg=${pair##*:}
  if ! python -c "import $mod" 2>/dev/null; then
    if [ -d .whl ]; then
      python -m pip install -q --no-index --find-links .whl "$pkg" >>"$OUT/install.log" 2>&1 \
        || echo "could not install $pkg from .whl" | tee -a "$OUT/install.log"
    else
      echo "missing $pkg and no .whl directory" | tee -a "$OUT/install.log"
    fi
  fi
done

# ---- 3-5
if [ "$SMOKE" = 1 ]; then
  step gpu_tests 120 python -m pytest -q -m gpu tests/gpu --junitxml="$OUT/gpu_tests.xml"
  step throughput 120 python benchmarks/train_throughput.py --smoke --out "$OUT/throughput"
  TRAIN_DTYPE=fp32 CLI_LIMIT=240  # a shared CPU is slow; the GPU limits below are what counts
else
  step gpu_tests 120 python -m pytest -q -m gpu tests/gpu --junitxml="$OUT/gpu_tests.xml"
  step throughput 270 python benchmarks/train_throughput.py --out "$OUT/throughput" --steps 3 --warmup 1
  TRAIN_DTYPE=bf16 CLI_LIMIT=45
fi
step train_cli "$CLI_LIMIT" python -m megatron_endprompt.train --config examples/tiny_cpu.yaml \
  --precision.dtype "$TRAIN_DTYPE" --training.train_steps 40 --checkpoint.save "$OUT/train_cli_run"
if [ "$SMOKE" = 1 ]; then FAST_ROPE=none; FAST_SDPA=math; else FAST_ROPE=triton; FAST_SDPA=cudnn; fi
step train_cli_fast "$CLI_LIMIT" python -m megatron_endprompt.train --config examples/tiny_cpu.yaml \
  --precision.dtype "$TRAIN_DTYPE" --training.train_steps 40 --checkpoint.save "$OUT/train_cli_fast_run" \
  --model.use_te false --model.ce_chunk_size 64 --model.rope_fusion "$FAST_ROPE" --model.attention_backend "$FAST_SDPA"

# ---- summary
{
  echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), ${SECONDS}s)"
  echo
  echo '```'
  cat "$OUT/env.json"
  echo '```'
  echo
  echo "| step | status |"
  echo "|---|---|"
  for name in gpu_tests throughput train_cli train_cli_fast; do echo "| $name | ${STATUS[$name]:-not run} |"; done
  echo
  [ -f "$OUT/throughput/results.md" ] && cat "$OUT/throughput/results.md"
  echo
  echo "## GPU tests (tail)"
  echo '```'
  tail -n 25 "$OUT/gpu_tests.log" 2>/dev/null
  echo '```'
  echo "## training CLI loss (first and last logged)"
  echo '```'
  for run in train_cli_run train_cli_fast_run; do
    echo "$run:"
    { head -n 1 "$OUT/$run/metrics.jsonl"; tail -n 1 "$OUT/$run/metrics.jsonl"; } 2>/dev/null
  done
  echo '```'
} >"$OUT/summary.md"
echo "wrote $OUT/summary.md (${SECONDS}s)"
