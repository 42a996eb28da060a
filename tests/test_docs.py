"""The commands of README.md and docs/*.md, as written: every command of a ```bash block is parsed by the parser
of the program it calls (ours, torchrun's, accelerate's, sbatch scripts' settings, make's targets), in-process;
and the README's recipes a CPU can run (install, the demo, your own novels, fine-tuning) run for real on the sample
corpus, each training cut short with --max-steps, a flag the README shows. So a renamed option, a dropped target
or a recipe that no longer works fails here rather than in a reader's shell."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE_DIR

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
EXTERNAL = {"pip", "python3", "apt", "tensorboard", "ssh", "scancel", "salloc", "mkdir", "cd", "ls"}


@dataclass(frozen=True)
class Command:
    doc: str
    section: str
    env: dict
    argv: list

    def __str__(self) -> str:
        return f"{self.doc} ({self.section}): {shlex.join(self.argv)}"


def blocks(path: Path) -> list[tuple[str, str]]:
    """(section heading, text) of each ```bash block of a Markdown file."""
    found, section = [], ""
    for part in re.split(r"^(```bash\n.*?^```)$", path.read_text(encoding="utf-8"), flags=re.M | re.S):
        if part.startswith("```bash\n"):
            found.append((section, part[len("```bash\n"):-3]))
        else:
            section = ([h for h in re.findall(r"^#+ (.*)$", part, re.M)] or [section])[-1]
    return found


def commands(path: Path, text: str, section: str) -> list[Command]:
    """The block's commands: continuation lines joined, comments dropped, `a && b` split, VAR=value prefixes
    taken as the environment."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            argv, words = words[:cut], words[cut + 1:]
            env = {}
            while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):
                name, value = argv.pop(0).split("=", 1)
                env[name] = value
            out.append(Command(str(path.relative_to(ROOT)), section, env, argv))
    return out


def all_commands() -> list[Command]:
    return [c for doc in DOCS for section, text in blocks(doc) for c in commands(doc, text, section)]


# --- every command, parsed by its program's own parser ------------------------------------------------------------

def check(argv: list[str], env: dict) -> None:
    """Raise (SystemExit from argparse, UserError, AssertionError) when the program would refuse these arguments."""
    from gpt_novel import cli, consolidate, generate, serve
    from gpt_novel.config import PrepareConfig, parse_config, train_config

    prog, args = argv[0].removeprefix(".venv/bin/"), argv[1:]
    if prog == "gpt-novel":
        sub, rest = args[0], args[1:]
        parsers = {"prepare": lambda a: parse_config(PrepareConfig, a, "prepare", positional="inputs"),
                   "train": train_config, "consolidate": consolidate.parser().parse_args,
                   "sample": generate.parser().parse_args, "serve": serve.parser().parse_args,
                   "launch": lambda a: check(a, env)}
        parsers.get(sub, lambda a: cli.build_parser().parse_args([sub, *a]))(rest)
    elif prog == "python" and args[:1] == ["-m"]:
        module = args[1]
        assert module in ("gpt_novel.train", "gpt_novel"), module
        check(["gpt-novel", "train", *args[2:]] if module == "gpt_novel.train" else ["gpt-novel", *args[2:]], env)
    elif prog == "python" and args[0].startswith(("tools/", "benchmarks/")):
        _check_script(args[0], args[1:])
    elif prog == "torchrun":
        from torch.distributed.run import get_args_parser

        _check_launched(get_args_parser().parse_args(args), env)
    elif prog == "accelerate":
        from accelerate.commands.launch import launch_command_parser

        assert args[0] == "launch"
        _check_launched(launch_command_parser().parse_args(args[1:]), env)
    elif prog == "sbatch":
        _check_sbatch(args, env)
    elif prog == "make":
        targets = [a for a in args if not a.startswith("-") and "=" not in a]
        variables = [a for a in args if "=" in a]
        subprocess.run(["make", "-n", "-C", str(ROOT), *targets, *variables], check=True, capture_output=True,
                       timeout=30)
    elif prog == "source":
        assert (ROOT / args[0]).exists() or args[0].startswith(".venv/"), args[0]
    else:
        assert prog in EXTERNAL, f"{prog}: a command the docs test does not know; teach it or use another"


def _check_launched(parsed, env: dict) -> None:
    assert parsed.module, "the trainer is started as a module: -m gpt_novel.train"
    check(["python", "-m", parsed.training_script, *parsed.training_script_args], env)


def _check_script(script: str, args: list[str]) -> None:
    path = ROOT / script
    assert path.is_file() and os.access(path, os.X_OK), f"{script} is not an executable file"
    if script in ("tools/consolidate.py", "tools/sample.py"):
        check(["gpt-novel", Path(script).stem, *args], {})
    elif script == "tools/fetch_corpus.py":
        spec = importlib.util.spec_from_file_location("fetch_corpus", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.build_parser().parse_args(args)


def _check_sbatch(args: list[str], env: dict) -> None:
    """The script exists, every setting given is one it reads, its own arguments (train.sh: the trainer's)
    parse."""
    at = next(i for i, a in enumerate(args) if a.endswith(".sh"))
    script = ROOT / args[at]
    text = script.read_text(encoding="utf-8")
    for name in env:
        assert re.search(rf"\${{?{name}\b", text), f"{script.name} reads no {name}"
    assert all(a.startswith("-") or args[i - 1].startswith("-") for i, a in enumerate(args[:at]))
    if script.name == "train.sh":
        check(["gpt-novel", "train", "--config", env.get("PRESET", "tiny"), *args[at + 1:]], env)


def test_every_command_of_the_readme_and_docs_parses_with_its_program(monkeypatch):
    monkeypatch.chdir(ROOT)  # the checkout's relative paths (launch/presets/small.yaml) are as a reader has them
    found = all_commands()
    assert len(found) > 40 and {c.doc for c in found} >= {"README.md", "docs/slurm.md", "docs/training.md"}
    failed = []
    for command in found:
        try:
            check(command.argv, command.env)
        except (SystemExit, Exception) as e:
            failed.append(f"{command}: {type(e).__name__}: {e}")
    assert not failed, "\n".join(failed)


def test_the_check_refuses_what_a_reader_could_not_run():
    for argv, env in [(["gpt-novel", "train", "--config", "tiny", "--max-stepz", "3"], {}),
                      (["torchrun", "--nproc_per_node", "2", "-m", "gpt_novel.train", "--lrr", "1"], {}),
                      (["gpt-novel", "sample", "hf/", "--prompts", "x"], {}),
                      (["sbatch", "slurm/prepare.sh"], {"INPUT": "/shared/novels"}),
                      (["make", "dmeo"], {}), (["gpt-novle", "prepare"], {})]:
        with pytest.raises((SystemExit, Exception)):
            check(argv, env)


# --- the README's CPU recipes, run ----------------------------------------------------------------------------

def readme(section: str) -> list[Command]:
    return [c for c in all_commands() if c.doc == "README.md" and c.section == section]


def run(command: Command, cwd: Path, *cut: str, timeout: int = 300) -> str:
    """The command as written (with the README's cut flags appended), the virtualenv's programs first on the
    PATH as after `source .venv/bin/activate`."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **command.env}
    result = subprocess.run([*command.argv, *cut], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.mark.slow
def test_install_activates_a_path_with_every_command():
    install, activate = readme("Install")
    assert install.argv == ["make", "install"]  # what CI runs first, as written (make test depends on it)
    if not (ROOT / activate.argv[1]).exists():
        pytest.skip("no .venv in the checkout (the suite runs from another environment)")
    script = (f"{shlex.join(activate.argv)} && command -v gpt-novel torchrun accelerate && gpt-novel --help && "
              "tools/sample.py --help")  # tools/*.py run through the virtualenv's python (their shebang)
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.count(str(ROOT / ".venv" / "bin")) == 3 and "consolidate" in out.stdout
    assert "--max-new-tokens MAX_NEW_TOKENS" in out.stdout


@pytest.mark.slow
def test_make_demo_serves_its_best_checkpoint(tmp_path):
    [demo] = readme("Quick start")
    assert demo.argv == ["make", "demo"]
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / ".fetch-failed").touch()  # no network in tests: as after a failed download
    out = run(Command(demo.doc, demo.section, demo.env, ["make", "-C", str(ROOT), "-o", "install", *demo.argv[1:]]),
              ROOT, f"BIN={BIN}", f"DEMO={tmp_path / 'demo'}", "DEMO_STEPS=25", "NPROC=1")
    assert "using the shipped sample corpus" in out
    assert re.search(r"consolidate: the best checkpoint is step-\d{8} \(val loss [\d.]+\)", out), out[-2000:]
    assert (tmp_path / "demo" / "hf" / "model.safetensors").exists()


@pytest.mark.slow
def test_your_own_novels_then_fine_tuning_run_as_written(tmp_path):
    shutil.copytree(SAMPLE_DIR, tmp_path / "novels")
    steps = readme("Your own novels")[:5]
    assert [c.argv[1] for c in steps] == ["prepare", "train", "consolidate", "sample", "serve"]
    prepare, train, consolidate, sample, serve = steps
    assert "read: 1 file(s), 6 chapters" in run(prepare, tmp_path)
    assert "done: 21 steps" in run(train, tmp_path, "--max-steps", "21")
    assert "the best checkpoint is step-00000021" in run(consolidate, tmp_path)
    assert len(run(sample, tmp_path).strip()) > 50
    _serve_answers(serve, tmp_path)
    shutil.copytree(SAMPLE_DIR, tmp_path / "novels" / "author")
    prepare, train = readme("Fine-tuning")
    run(prepare, tmp_path)
    out = run(train, tmp_path, "--max-steps", "12", "--warmup-steps", "2")
    assert f"starting from --init-from {tmp_path / 'hf'}" in out and "done: 12 steps" in out


def _serve_answers(serve: Command, cwd: Path) -> None:
    """`gpt-novel serve` runs until stopped: it is started as written, asked for its info, and stopped."""
    port = int(serve.argv[serve.argv.index("--port") + 1])
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen(serve.argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2) as answer:
                    assert answer.status == 200
                    return
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"{serve} did not answer: {proc.stdout.read().decode()[-2000:] if proc.poll() else ''}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_prepare_step_by_step_as_slurm_md_shows_it(tmp_path):
    shutil.copytree(SAMPLE_DIR, tmp_path / "novels")
    steps = [c for c in all_commands() if c.doc == "docs/slurm.md" and "--step" in c.argv]
    assert [c.argv[c.argv.index("--step") + 1] for c in steps] == ["plan", "read", "merge", "segment", "vocab",
                                                                     "encode", "finish"]
    for command in steps:
        run(command, tmp_path)
    assert (tmp_path / "data" / "manifest.json").exists()
