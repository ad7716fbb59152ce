#!/usr/bin/env bash
# Multi-node training under SLURM: one srun task per node, each running torchrun with c10d rendezvous.
#
#   sbatch --nodes 4 examples/slurm_launch.sh [RECIPE] [SAVE_DIR] [--section.key value ...]
#   DRY_RUN=1 bash examples/slurm_launch.sh RECIPE    # print the layout for NODES x GPUS_PER_NODE ranks, no srun
#
# Arguments (defaults in brackets): RECIPE [examples/llama3_8b_endprompt_64k.yaml], SAVE_DIR
# [runs/<job name>]; anything after them is passed to the trainer as overrides. Run from the repository root
# (or set REPO_DIR). Requeue-safe: a restarted job resumes from SAVE_DIR's latest complete checkpoint, and on
# SIGTERM (preemption; --signal asks for one 300 s before the time limit) every rank finishes its step, a
# checkpoint is saved and the trainer exits 0.
#SBATCH --job-name=endprompt
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --requeue
#SBATCH --signal=TERM@300
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

RECIPE=${1:-examples/llama3_8b_endprompt_64k.yaml}
SAVE_DIR=${2:-runs/${SLURM_JOB_NAME:-endprompt}}
shift $(( $# < 2 ? $# : 2 ))
REPO_DIR=${REPO_DIR:-.}
PYTHON=${PYTHON:-python}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NODES=${SLURM_NNODES:-1}
MASTER_PORT=${MASTER_PORT:-29500}
if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
  MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
else
  MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
fi

DISTRIBUTED_ARGS=(
  --nnodes "$NODES"
  --nproc-per-node "$GPUS_PER_NODE"
  --rdzv-backend c10d
  --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"
  --rdzv-id "${SLURM_JOB_ID:-local}"
  --max-restarts 0
)
TRAIN_ARGS=(
  --config "$RECIPE"
  --checkpoint.save "$SAVE_DIR"
)
ENV_VARS=(
  OMP_NUM_THREADS=8
  CUDA_DEVICE_MAX_CONNECTIONS=1      # required by megatron's TP/SP communication overlap
  TORCH_NCCL_ASYNC_ERROR_HANDLING=1
  PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
)

cd "$REPO_DIR"
if [[ "${DRY_RUN:-0}" == "1" ]]; then
  exec env "${ENV_VARS[@]}" "$PYTHON" -m megatron_endprompt.train "${TRAIN_ARGS[@]}" "$@" \
    --dry-run --dry-run-world-size $(( NODES * GPUS_PER_NODE ))
fi
mkdir -p logs "$SAVE_DIR"
srun --kill-on-bad-exit=1 env "${ENV_VARS[@]}" \
  "$PYTHON" -m torch.distributed.run "${DISTRIBUTED_ARGS[@]}" -m megatron_endprompt.train "${TRAIN_ARGS[@]}" "$@"
