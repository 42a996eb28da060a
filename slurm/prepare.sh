#!/usr/bin/env bash
# gpt-novel prepare on a Slurm cluster: the per-partition steps as job arrays spread over nodes, the merges and
# the final step as dependent jobs (--dependency=afterok), all on a shared file system.
#
#   INPUTS=/shared/novels DATA_DIR=/shared/data sbatch slurm/prepare.sh
#   INPUTS="/shared/a /shared/b" DATA_DIR=/shared/data TASKS=32 CPUS=64 PREPARE_ARGS="--vocab-size 60000" \
#       sbatch slurm/prepare.sh
#
# This job (small: one CPU) lists and hashes the inputs and saves the plan (`--step plan`), then submits
#   read     array of TASKS tasks   decode, clean, split chapters              afterok: -
#   merge    one job                boilerplate lines, duplicate chapters      afterok: read
#   segment  array of TASKS tasks   thulac, word counts                        afterok: merge
#   vocab    one job                the vocabulary                             afterok: segment
#   encode   array of TASKS tasks   ids, train/val, the partitions' shards     afterok: vocab
#   finish   one job                tail and val shards, manifest, report      afterok: encode
# and waits for the finish job; its exit status is the pipeline's (0 done, 2 bad input, 1 another failure or a
# cancelled step), and a failed run lists the state of every step's jobs.
# Task i of an array does partitions i, i+TASKS, i+2·TASKS, … of the plan (its log says which, and which were done
# earlier); the partitions come from the input listing and --partition-size alone, so the dataset is the same
# bytes for any TASKS and as from one machine. A failed or cancelled task stops the jobs after it; submitting this
# script again redoes only the partitions that are not complete.
#
# Settings (environment variables):
#   INPUTS        input files or directories, space-separated                           required
#   DATA_DIR      the output directory (--out)                                          required
#   TASKS         tasks per array (nodes × tasks per node you want busy)                default: 8
#   CPUS          CPUs per array task; its --workers                                    default: 16
#   MEM_PER_CPU   memory per CPU of the array tasks (thulac takes ~0.8 GB a process)    default: the site's
#   STEP_TIME     --time of each step's jobs                                            default: 24:00:00
#   WORK_DIR      the work directory, on the shared file system                         default: .DATA_DIR.work beside it
#   PREPARE_ARGS  more prepare options, the same for every step (--tokenizer char …)    default: none
#   LOG_DIR       where the steps' jobs write their logs                   default: logs/prepare-JOBID of the submit directory
#   REPO          the gpt-novel checkout                                                default: the submit directory
#   PYTHON        its interpreter                                                       default: $REPO/.venv/bin/python
# sbatch reads the partition and account from SBATCH_PARTITION and SBATCH_ACCOUNT, for this job and the ones it
# submits. Submit from the checkout: this job's own log is logs/gpt-novel-prepare-JOBID.out of the submit directory
# (the checkout has logs/; elsewhere make it first, or Slurm has nowhere to write the log), and each step's log is
# LOG_DIR/STEP-JOBID[_TASK].out: what it did, with counts and seconds.
#
#SBATCH --job-name=gpt-novel-prepare
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=2-00:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
INPUTS=${INPUTS:?set INPUTS to the novels (files or directories)}
DATA_DIR=${DATA_DIR:?set DATA_DIR to the output directory}
TASKS=${TASKS:-8}
CPUS=${CPUS:-16}
MEM_PER_CPU=${MEM_PER_CPU:-}
STEP_TIME=${STEP_TIME:-24:00:00}
LOG_DIR=${LOG_DIR:-${SLURM_SUBMIT_DIR:-$PWD}/logs/prepare-${SLURM_JOB_ID:-$$}}
mkdir -p "$LOG_DIR"
PREPARE_ARGS=${PREPARE_ARGS:-}

# shellcheck disable=SC2206  # INPUTS and PREPARE_ARGS are lists of words
prepare=("$PYTHON" -m gpt_novel prepare $INPUTS --out "$DATA_DIR" $PREPARE_ARGS ${WORK_DIR:+--work-dir "$WORK_DIR"})
command=$(printf '%q ' "${prepare[@]}")

# not `| tee /dev/stderr`: that opens this job's log anew at offset 0, over the lines already in it
plan_log=$("${prepare[@]}" --step plan --tasks "$TASKS" --workers "${SLURM_CPUS_PER_TASK:-1}")
echo "$plan_log"
if grep -q "nothing to do" <<<"$plan_log"; then
    exit 0
fi

# step NAME DEPENDENCY ARRAY?: submit one step, print its job id
step() {
    local name=$1 after=$2 array=$3 args=(--parsable --job-name "gpt-novel-$1" --time "$STEP_TIME" --kill-on-invalid-dep=yes)
    [ -n "$after" ] && args+=(--dependency "afterok:$after")
    if [ "$array" = array ]; then
        args+=(--array "0-$((TASKS - 1))" --cpus-per-task "$CPUS" ${MEM_PER_CPU:+--mem-per-cpu "$MEM_PER_CPU"}
               --output "$LOG_DIR/$name-%A_%a.out")
        sbatch "${args[@]}" --wrap "$command --step $name --task \$SLURM_ARRAY_TASK_ID --tasks $TASKS --workers $CPUS"
    else
        args+=(--cpus-per-task 1 --output "$LOG_DIR/$name-%j.out")
        sbatch "${args[@]}" "${@:4}" --wrap "$command --step $name --workers 1"
    fi
}

read=$(step read "" array)
merge=$(step merge "$read" one)
segment=$(step segment "$merge" array)
vocab=$(step vocab "$segment" one)
encode=$(step encode "$vocab" array)
finish=$(step finish "$encode" one)
echo "submitted: read $read, merge $merge, segment $segment, vocab $vocab, encode $encode (arrays of $TASKS tasks)," \
     "finish $finish"
echo "waiting for the finish job; each step's log: $LOG_DIR/STEP-JOBID[_TASK].out"

# Polled every 2 s rather than with `sbatch --wait`, whose polls back off to half a minute apart (the driver said
# "finished" ~30 s after the last step); an empty state (the controller did not answer) is waited on too.
field() { grep -o "$1=[^ ]*" <<<"$2" | head -n 1 | cut -d= -f2; }
state=PENDING
while [[ $state =~ ^(PENDING|CONFIGURING|RUNNING|COMPLETING|SUSPENDED|REQUEUED|REQUEUE_HOLD|RESIZING|)$ ]]; do
    sleep 2
    record=$(scontrol show job -o "$finish" 2>/dev/null || true)
    state=$(field JobState "$record")
done
status=$(field ExitCode "$record" | cut -d: -f1)
if [ "$state" = COMPLETED ]; then
    echo "finished: $DATA_DIR"
    exit 0
fi
echo "the finish job did not complete ($state); the steps:"
for id in "$read" "$merge" "$segment" "$vocab" "$encode" "$finish"; do
    scontrol show job -o "$id" | while read -r line; do
        task=$(field ArrayTaskId "$line")
        echo "  $(field JobName "$line") job $(field JobId "$line")${task:+ task $task}: $(field JobState "$line")"
    done
done
echo "fix what the first failed step's log says and submit again: completed partitions are kept"
[ "${status:-1}" -ne 0 ] && exit "$status" || exit 1
