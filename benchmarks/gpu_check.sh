#!/usr/bin/env bash
# One prepared GPU check for a short session on one CUDA machine (H100 80 GB or H200 141 GB), at most 9 minutes:
# the step limits below add up to 530 s, plus at most 10 s for the report and the archive. Each step runs under
# its own timeout; a failing step is recorded and the next one still runs; results are written as they come.
#
#   OUT=/path/to/results bash benchmarks/gpu_check.sh           # on the GPU machine, from the repo root
#   GPU_CHECK_SMOKE=1 OUT=/tmp/gc bash benchmarks/gpu_check.sh  # CPU rehearsal of every step at tiny sizes (CI)
#
# Steps (limit on a GPU; the CPU rehearsal allows 4x, a shared CPU is slow):
#   env             15 s  device, torch / CUDA / cuDNN / Triton / TE versions, SDPA backends, what is missing
#   install         35 s  only what is missing, offline from ./.whl (benchmarks/prepare_gpu_wheels.sh): the
#                         machine brings python3, torch, triton, transformers and pytest, never megatron-core
#   gpu_tests      120 s  pytest -m gpu tests/gpu: parity with HF transformers in bf16 with positions up to 64K
#                         under each SDPA backend, the reference model, Triton / compile RoPE, chunked CE
#   te_tests        30 s  pytest -m te tests/te tests/gpu (skipped where Transformer Engine is missing)
#   throughput     240 s  benchmarks/train_throughput.py: local-spec and (with TE) TE cases side by side, each
#                         labelled; 64K-token cases with chunked CE (unchunked they do not fit 80 GB)
#   train_cli       45 s  the training CLI in bf16, tiny recipe, mock data, layer spec auto: loss must fall
#   train_cli_fast  45 s  the same on the local spec with chunked CE, Triton RoPE and cuDNN attention
#
# What comes back: $OUT/summary.md, $OUT/results.json and $OUT/logs.tar.gz (every step's log, env.json, pytest
# junit XML, the throughput table, the CLI metrics): 3 files, within the 8 a lent machine returns. Checkpoints and
# scratch go to $GPU_CHECK_WORK (default ${TMPDIR:-/tmp}/gpu_check_work; its earlier logs and runs are removed),
# never into $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/gpu_check_work}
SMOKE=${GPU_CHECK_SMOKE:-0}
LOGS=$WORK/logs
rm -rf "$LOGS" "$WORK/train_cli_run" "$WORK/train_cli_fast_run"  # only what this script writes there
mkdir -p "$LOGS" "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SCALE=$([ "$SMOKE" = 1 ] && echo 4 || echo 1)

step() {  # step NAME LIMIT_S CMD...: run under timeout, log to $LOGS/NAME.log, append a row to steps.tsv
  local name=$1 limit=$(($2 * SCALE)) start=$SECONDS rc status
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  timeout -k 5 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="timeout after ${limit}s" ;;
    5) status="no tests ran (pytest exit 5: none selected, or all skipped at import)" ;;
    *) status="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$limit" "$((SECONDS - start))" "$rc" "$status" "$*" >>"$LOGS/steps.tsv"
  echo "=== $name: $status after $((SECONDS - start))s"
  tail -n 5 "$LOGS/$name.log"
}

install_missing() {  # pip-install offline, without dependencies, every required package that is missing
  local pkg rc=0
  for pkg in $(python3 benchmarks/gpu_env.py --missing); do
    if [ ! -d .whl ]; then echo "missing $pkg and no .whl directory"; rc=1; continue; fi
    python3 -m pip install -q --no-index --no-deps --find-links .whl "$pkg" || { echo "could not install $pkg"; rc=1; }
  done
  python3 benchmarks/gpu_env.py --missing | sed 's/^/still missing: /'
  return $rc
}
export -f install_missing

cli_run() {  # cli_run NAME EXTRA_FLAGS...: the training CLI, checkpoint in $WORK, metrics copied to $LOGS
  local name=$1
  shift
  step "$name" 45 python3 -m megatron_endprompt.train --config examples/tiny_cpu.yaml \
    --precision.dtype "$CLI_DTYPE" --training.train_steps "$CLI_STEPS" --logging.log_interval "$CLI_LOG" \
    --checkpoint.save "$WORK/${name}_run" "$@"
  cp "$WORK/${name}_run/metrics.jsonl" "$LOGS/${name}_metrics.jsonl" 2>/dev/null
}

step env 15 bash -c "nvidia-smi >'$LOGS/nvidia-smi.txt' 2>&1; python3 benchmarks/gpu_env.py >'$LOGS/env.json'"
step install 35 bash -c install_missing
step gpu_tests 120 python3 -m pytest -q -m gpu tests/gpu --junitxml="$LOGS/gpu_tests.xml"
# tests/te and tests/gpu only: collecting all of tests/ imports every unit test module (~45 s on a loaded CPU)
mapfile -t TE_TESTS < <(ls -d tests/te tests/gpu 2>/dev/null)
step te_tests 30 python3 -m pytest -q -m te "${TE_TESTS[@]}" --junitxml="$LOGS/te_tests.xml"
if [ "$SMOKE" = 1 ]; then
  step throughput 240 python3 benchmarks/train_throughput.py --smoke --out "$LOGS/throughput" \
    --cases ep8k_b1,ref_ep8k_b1,full64k_b1_ce,ref_full64k_b1_ce
  CLI_DTYPE=fp32 CLI_STEPS=4 CLI_LOG=2 FAST=(--model.rope_fusion none --model.attention_backend math)
else
  # --budget-s: no case starts in the last 50 s (a 64K case takes ~20 s), so the table names every skipped case
  step throughput 240 python3 benchmarks/train_throughput.py --out "$LOGS/throughput" --steps 3 --warmup 1 \
    --budget-s 190
  CLI_DTYPE=bf16 CLI_STEPS=40 CLI_LOG=5 FAST=(--model.rope_fusion triton --model.attention_backend cudnn)
fi
cli_run train_cli
cli_run train_cli_fast --model.use_te false --model.ce_chunk_size 64 "${FAST[@]}"

SMOKE_FLAG=$([ "$SMOKE" = 1 ] && echo --smoke)
timeout 5 python3 benchmarks/gpu_check_report.py "$LOGS" "$OUT" $SMOKE_FLAG \
  || echo "# GPU check: the report failed; see logs.tar.gz (steps.tsv)" >"$OUT/summary.md"
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
echo "wrote $OUT/summary.md, $OUT/results.json, $OUT/logs.tar.gz (${SECONDS}s)"
