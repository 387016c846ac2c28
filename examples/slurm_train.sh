#!/bin/bash
# Train a generator with FSDP2 on several nodes under SLURM: one torchrun per node, each starting
# one process per GPU; torchrun's c10d rendezvous on the first node ties them into one job.
# `--` ends torchrun's options: it would read our `--log` as an abbreviation of its `--log-dir`.
#
#   sbatch examples/slurm_train.sh                      # edit the #SBATCH lines and paths first
#   NODES=4 GPUS=8 sbatch --nodes 4 --gpus-per-node 8 examples/slurm_train.sh
#
#SBATCH --job-name=imagelm-gpt
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one torchrun per node; it starts the per-GPU processes
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
#SBATCH --requeue                    # a preempted job restarts; --resume auto continues it
set -euo pipefail

CODES=${CODES:-/data/imagenet256-codes}   # made once by `imagelm extract-codes`
OUT=${OUT:-runs/gpt-xl}                   # on a shared filesystem: every rank writes its shards here
GPUS=${GPUS:-8}

# The first node of the allocation hosts the rendezvous.
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${PORT:-29500}

srun --kill-on-bad-exit=1 python -m torch.distributed.run \
    --nnodes "$SLURM_NNODES" --nproc-per-node "$GPUS" \
    --rdzv-backend c10d --rdzv-endpoint "$HEAD:$PORT" --rdzv-id "$SLURM_JOB_ID" \
    -m imagelm.cli -- train \
        --codes "$CODES" --out "$OUT" --preset GPT-XL \
        --strategy fsdp --activation-checkpointing --batch-size 256 --grad-accum 1 \
        --lr 1e-4 --steps 300000 --ckpt-every 5000 --log-every 100 --workers 4 \
        --resume auto --log tensorboard
