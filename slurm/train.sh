#!/usr/bin/env bash
# gpt-novel on a Slurm cluster: one launcher (torchrun) per node, DeepSpeed across all GPUs of all nodes (or one
# process per CPU node), checkpoint + requeue on preemption or time limit, exact resume.
#
#   DATA=data RUN_DIR=runs/small sbatch --gpus-per-node 8 --cpus-per-task 32 slurm/train.sh     # a GPU partition
#   DATA=data RUN_DIR=runs/tiny PRESET=tiny sbatch --cpus-per-task 2 slurm/train.sh            # a CPU partition
#   PRESET=medium DATA=/data/novels RUN_DIR=/runs/m sbatch --nodes 4 --gpus-per-node 8 --cpus-per-task 32 \
#       slurm/train.sh --max-steps 100000 --lr 2e-4
#
# No GPUs or CPUs are asked for below, so that the script starts on any partition: ask for the node's GPUs with
# --gpus-per-node (one trainer process each) and for CPUs with --cpus-per-task (all of them go to the node's one
# launcher: data loading and, on a CPU node, the trainer's threads).
#
# Settings (environment variables; everything after the script name goes to the trainer as overrides):
#   PRESET          preset name (tiny small medium large xl) or a YAML path       default: small
#   DATA            prepared data directory (gpt-novel prepare)                  required
#   RUN_DIR         run directory; resubmitting with the same one resumes         required
#   DS_CONFIG       DeepSpeed JSON                                               default: ds_configs/zero2.json
#   PROCS_PER_NODE  trainer processes per node                                   default: GPUs on the node, else 1
#   REPO            the gpt-novel checkout                                       default: the submit directory
#   PYTHON          an interpreter with gpt-novel installed (`make install`)      default: $REPO/.venv/bin/python
#   MASTER_PORT     rendezvous port on the first node                            default: derived from the job id
#
# On USR1 (sent --signal seconds before the time limit, or by `scancel --signal=USR1 --batch JOB`) or TERM, the
# script writes RUN_DIR/STOP: every rank finishes its optimizer step, a complete checkpoint is saved, the trainer
# exits, and the job requeues itself (`scontrol requeue`); the requeued job resumes from that checkpoint. A job
# whose training finished (RUN_DIR/DONE) does not requeue. A stop file is used instead of forwarding the signal
# because the launchers (torchrun) die of USR1 and kill their workers on TERM after a grace period.
#
# Exit status (what `bash slurm/train.sh` inside an allocation returns, and the job's when it does not requeue): the
# trainer's own, recorded with its reason by whichever rank decided it (torchrun would turn every non-zero status
# into 1 and a page of tracebacks, so the ranks exit 0 once it is recorded): 0 finished, 75 stopped with a checkpoint
# (resume me), 2 bad input or config, 1 any other failure. A failure on any rank ends every rank within seconds. The
# log's last line says how the job ended and why. The log is logs/gpt-novel-JOBID.out of the submit directory: submit
# from the checkout, which has logs/ (elsewhere make it first, or Slurm has nowhere to write it and fails the job).
#
#SBATCH --job-name=gpt-novel
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
set -uo pipefail

REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
if ! command -v "$PYTHON" >/dev/null; then
  echo "[slurm/train.sh] no Python at $PYTHON: run \`make install\` in the checkout (on a shared file system), or set PYTHON" >&2
  exit 2
fi
PRESET=${PRESET:-small}
DATA=${DATA:?set DATA to a prepared data directory}
RUN_DIR=${RUN_DIR:?set RUN_DIR to the run directory}
DS_CONFIG=${DS_CONFIG:-ds_configs/zero2.json}
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
PROCS_PER_NODE=${PROCS_PER_NODE:-$([ "$GPUS" -gt 0 ] && echo "$GPUS" || echo 1)}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
# the trainer's exit status, recorded by the rank that decided it (see gpt_novel/faults.py: record_status)
GPT_NOVEL_STATUS_FILE="$RUN_DIR/.status-${SLURM_JOB_ID}-${SLURM_RESTART_COUNT:-0}"
export REPO PYTHON PRESET DATA RUN_DIR DS_CONFIG PROCS_PER_NODE MASTER_ADDR MASTER_PORT GPT_NOVEL_STATUS_FILE
cd "$REPO" || exit 1
made_run_dir=0
[ -d "$RUN_DIR" ] || made_run_dir=1
mkdir -p "$RUN_DIR"  # for the status file; removed again below if the trainer refused to start
rm -f "$RUN_DIR/STOP" "$GPT_NOVEL_STATUS_FILE"

log() { echo "[slurm/train.sh $(date +%T)] job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0}: $*"; }
latest=$(ls -d "$RUN_DIR"/checkpoints/step-* 2>/dev/null | tail -n 1)
log "nodes $SLURM_JOB_NODELIST ($SLURM_NNODES × $PROCS_PER_NODE processes), master $MASTER_ADDR:$MASTER_PORT," \
    "resuming from ${latest:-nothing (fresh start)}"
[ "$GPUS" -gt 0 ] || log "no GPU visible on this node: $PROCS_PER_NODE process(es) on its CPUs (on a GPU partition," \
    "ask for them: sbatch --gpus-per-node N)"

stop_requested=0
request_stop() {
  log "signal received: asking the trainer to checkpoint and stop"
  stop_requested=1
  touch "$RUN_DIR/STOP"
}
trap request_stop USR1 TERM

# One launcher per node; SLURM_NODEID is evaluated on each node, not here on the batch host.
srun --ntasks-per-node=1 --kill-on-bad-exit=0 bash -c '
  echo "[slurm/train.sh] node $SLURMD_NODENAME (node rank $SLURM_NODEID) starts $PROCS_PER_NODE process(es)"
  exec "$PYTHON" -m torch.distributed.run --nnodes "$SLURM_NNODES" --node_rank "$SLURM_NODEID" \
    --nproc_per_node "$PROCS_PER_NODE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m gpt_novel.train --config "$PRESET" --data "$DATA" --run-dir "$RUN_DIR" --deepspeed "$DS_CONFIG" "$@"
' gpt-novel "$@" &
srun_pid=$!
# bash runs the trap only between foreground commands: wait in a loop until srun has really ended
while true; do
  wait "$srun_pid"
  status=$?
  kill -0 "$srun_pid" 2>/dev/null || break
done

cause="no reason recorded: a process died (see the lines above)"
if [ -f "$GPT_NOVEL_STATUS_FILE" ]; then
  status=$(head -n 1 "$GPT_NOVEL_STATUS_FILE")
  cause=$(sed -n 2p "$GPT_NOVEL_STATUS_FILE")
  rm -f "$GPT_NOVEL_STATUS_FILE"
fi
[ "$made_run_dir" = 1 ] && rmdir "$RUN_DIR" 2>/dev/null  # only if the trainer refused before writing anything
if [ "$status" = 0 ] && [ -f "$RUN_DIR/DONE" ]; then
  log "training finished: $cause"
  exit 0
fi
if [ "$stop_requested" = 1 ] && [ "$status" = 75 ]; then
  log "checkpoint saved; requeueing"
  # The requeue ends this script at once with a TERM of its own, which must not count as a second stop request.
  # In an interactive allocation (salloc) it fails: then the caller gets 75 below.
  trap - USR1 TERM
  scontrol requeue "$SLURM_JOB_ID" && sleep 60
fi
log "trainer exited with status $status: $cause"
exit "$status"
