#!/usr/bin/env bash
# One training run as a plain SLURM batch job: srun starts one task per GPU and every task is one DDP rank.
#
#   sbatch scripts/sbatch_train.sh experiment=full                                  # 1 node x 1 GPU
#   sbatch --ntasks-per-node=8 --gpus-per-node=8 scripts/sbatch_train.sh experiment=full trainer=ddp
#   sbatch --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 scripts/sbatch_train.sh experiment=full trainer=ddp
#   sbatch -p gpu -A myproject --time=2-00:00:00 scripts/sbatch_train.sh experiment=full
#
# Options given to sbatch override the #SBATCH lines below; arguments after the script are the run's overrides.
# The Trainer's layout is the allocation's (trainer.num_nodes / trainer.devices below, never typed by hand), and
# the run folder is outputs/<task_name>/runs/slurm-<job id> in every task and every attempt of the job. Before the
# time limit (USR2) and on `scontrol requeue` or preemption (SIGTERM) every rank saves checkpoints/last.ckpt at
# the same step and exits; after USR2 rank 0 requeues the job itself (SLURM does not at a time limit), after
# SIGTERM SLURM does; the next attempt resumes from last.ckpt. The site must allow requeueing (--requeue below,
# JobRequeue) and give every node the run folder (a shared filesystem). docs/sweeps.md#plain-sbatch.
#
# Environment: DGGGAN_PYTHON, the Python with dgggan-pl installed (default: `python` on the PATH sbatch was
# called with; sbatch passes the submitting shell's environment on, so an activated venv is used).
#SBATCH --job-name=dgggan-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=3-00:00:00
#SBATCH --signal=USR2@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%j.out
# --ntasks-per-node: DDP ranks per node, one per GPU (Lightning reads them from SLURM; --ntasks alone it refuses)
# --cpus-per-task: data.num_workers + 1 per rank
# --signal=USR2@120: 120 s before the time limit every task gets USR2: a batch, last.ckpt, the requeue
# --open-mode=append: the attempts of a requeued job write one log file
set -euo pipefail

nodes=${SLURM_JOB_NUM_NODES:?run this script with sbatch (no SLURM job here)}
per_node=$((SLURM_NTASKS / nodes))
# --kill-on-bad-exit: a rank that fails ends the others at once instead of leaving them in a collective
exec srun --kill-on-bad-exit=1 "${DGGGAN_PYTHON:-python}" -m dgggan_pl.train \
    trainer.num_nodes="$nodes" trainer.devices="$per_node" "$@"
