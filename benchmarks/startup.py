"""Seconds from a launcher's start to the first trained step, for every way a user starts the trainer. Prints JSON
(and writes it to --json).

usage: python benchmarks/startup.py [--repeats 3] [--work DIR] [--json PATH]

The `tiny` preset on the shipped sample (seq len 32) trains 12 steps on 2 processes with ZeRO-2 (the reference);
then each launcher resumes a copy of that run as it was at its step-6 checkpoint, from a directory outside the
checkout and with OMP_NUM_THREADS unset: a plain `python -m gpt_novel.train`, `gpt-novel train`, torchrun and
`accelerate launch` with 1 and 2 processes, `gpt-novel launch`, `sbatch slurm/train.sh` on 1 and 2 nodes (when a
Slurm with 2 idle nodes answers) and `gpt-novel train` installed from a wheel into a fresh virtualenv. One process
is an elastic resume (DeepSpeed's universal conversion); two are not. The time is from the launch to the moment
step 7 is in metrics.jsonl (the median of --repeats runs), then a STOP file ends the run. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from resume import cut  # benchmarks/resume.py: a run as it was at one of its checkpoints

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OPTIONS = ["--micro-batch-size", "4", "--global-batch-size", "24", "--num-workers", "1", "--warmup-steps", "2",
           "--save-every", "6", "--eval-every", "6", "--sample-every", "100", "--eval-batches", "2", "--progress",
           "false"]
CUT = 6
TRAIN = ["-m", "gpt_novel.train", "--deepspeed", "zero2"]
ACCELERATE = [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "launch" / "zero2.yaml")]
LAUNCHERS = {
    "python -m gpt_novel.train": [sys.executable, *TRAIN],
    "gpt-novel train": [str(BIN / "gpt-novel"), "train", "--deepspeed", "zero2"],
    "torchrun --nproc_per_node 1": [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "1", *TRAIN],
    "torchrun --nproc_per_node 2": [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", *TRAIN],
    "accelerate launch --num_processes 1": [*ACCELERATE, "--num_processes", "1", "-m", "gpt_novel.train"],
    "accelerate launch --num_processes 2": [*ACCELERATE, "--num_processes", "2", "-m", "gpt_novel.train"],
    "gpt-novel launch torchrun --nproc_per_node 2": [str(BIN / "gpt-novel"), "launch", str(BIN / "torchrun"),
                                                     "--standalone", "--nproc_per_node", "2", *TRAIN],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, help="keep the data and runs here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = run(args.work or Path(tmp), args.repeats)
    text = json.dumps(report, indent=1, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


def run(work: Path, repeats: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    data, reference = work / "data", work / "reference"
    call([str(BIN / "gpt-novel"), "prepare", str(ROOT / "sample" / "corpus"), "--out", str(data), "--seq-len", "32",
           "--val-ratio", "0.2", "--force"])
    call([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", *TRAIN, *_options(data, reference, 12)])
    launchers = dict(LAUNCHERS)
    if _slurm_up():
        for nodes in (1, 2):
            launchers[f"sbatch --nodes {nodes} slurm/train.sh"] = ["sbatch", "--wait", "--nodes", str(nodes),
                                                                   "--cpus-per-task", "2", "--output", "/dev/null",
                                                                   str(ROOT / "slurm" / "train.sh")]
    launchers["wheel in a fresh venv: gpt-novel train"] = [str(_wheel_venv(work) / "bin" / "gpt-novel"), "train",
                                                           "--deepspeed", "zero2"]
    report = {"machine": f"{os.cpu_count()} CPUs", "resumed_from_step": CUT, "repeats": repeats, "seconds": {}}
    for name, command in launchers.items():
        times = [_time_to_first_step(command, data, reference, work / "runs" / f"{name}-{i}".replace(" ", "_"))
                 for i in range(repeats)]
        report["seconds"][name] = round(statistics.median(times), 1)
        print(f"{name}: {times}", file=sys.stderr, flush=True)
    return report


def _options(data: Path, run_dir: Path, steps: int) -> list[str]:
    return ["--config", "tiny", *OPTIONS, "--max-steps", str(steps), "--data", str(data), "--run-dir", str(run_dir)]


def _time_to_first_step(command: list[str], data: Path, reference: Path, run_dir: Path) -> float:
    cut(reference, run_dir, CUT)
    if command[0] == "sbatch":  # the script passes --config, --data and --run-dir from the environment
        env = {**user_env(), "PRESET": "tiny", "DATA": str(data), "RUN_DIR": str(run_dir), "REPO": str(ROOT),
               "PYTHON": sys.executable}
        command = [*command, *OPTIONS, "--max-steps", "1000"]
    else:
        env, command = user_env(), [*command, *_options(data, run_dir, 1000)]
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=run_dir.parent, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = run_dir / "metrics.jsonl"
    while f'"step": {CUT + 1},' not in metrics.read_text():
        if proc.poll() is not None:
            raise SystemExit(f"{' '.join(command[:4])}… ended ({proc.returncode}) before step {CUT + 1}")
        time.sleep(0.02)
    seconds = time.monotonic() - started
    (run_dir / "STOP").touch()
    proc.wait(timeout=300)
    return seconds


def _wheel_venv(work: Path) -> Path:
    """A fresh virtualenv with gpt-novel installed from its wheel; its libraries are this environment's (the tested
    set), reached through a path entry."""
    source, venv = work / "wheel-source", work / "venv"
    shutil.copytree(ROOT / "gpt_novel", source / "gpt_novel", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    call([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work / "dist"),
           str(source)])
    call([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    site = call([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    (Path(site.strip()) / "tested-set.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    call([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q",
           *map(str, (work / "dist").glob("gpt_novel-*.whl"))])
    return venv


def _slurm_up() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-t", "idle", "-o", "%N"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return len(set(out.split())) >= 2


def user_env() -> dict[str, str]:
    """A user's shell: no thread settings, no launcher variables."""
    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RANK",
                                                              "WORLD_SIZE", "LOCAL_RANK")}


def call(cmd: list[str]) -> str:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=user_env())
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


if __name__ == "__main__":
    main()
