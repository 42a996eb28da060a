"""Imported at start-up by every Python process started with tests/gate on PYTHONPATH: with GPT_NOVEL_TEST_GATE
set, reading a novel waits until that file exists, and says so by creating GATE.waiting. Patching in one process
would not reach prepare's pool workers, which are spawned, so the fault tests gate every process this way."""

import os

if os.environ.get("GPT_NOVEL_TEST_GATE"):
    import pathlib
    import time

    from gpt_novel.data import ingest

    _gate, _read = pathlib.Path(os.environ["GPT_NOVEL_TEST_GATE"]), ingest.read_file

    def _read_when_open(path):
        _gate.with_name(_gate.name + ".waiting").touch()
        while not _gate.exists():
            time.sleep(0.05)
        return _read(path)

    ingest.read_file = _read_when_open
