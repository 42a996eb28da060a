"""The training loop's host-side pieces: the stop request's polling (fast, in-process), and the one reduction of a
step across two real ranks."""

from __future__ import annotations

import signal

import pytest
import torch

from gpt_novel import parallel, train


@pytest.fixture
def stop_request(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(train.time, "monotonic", lambda: clock[0])
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    request = train._StopRequest(tmp_path / "STOP", poll_s=2.0)
    yield request, clock
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def test_the_stop_file_is_looked_for_at_most_every_poll_interval(stop_request):
    request, clock = stop_request
    assert request.requested() is False  # polled now
    request.stop_file.touch()
    clock[0] += 1.9
    assert request.requested() is False  # not looked for again yet
    clock[0] += 0.2
    assert request.requested() is True


def test_a_signal_is_seen_at_once(stop_request):
    request, _ = stop_request
    assert request.requested() is False
    signal.raise_signal(signal.SIGUSR1)
    assert request.requested() is True and request.signal == signal.SIGUSR1


def _reduce_as(rank: int, store: str, results) -> None:
    """One rank of two (a spawned process): a device loss, a host flag and a count, summed in one all-reduce."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        loss = torch.tensor(1.5 * (rank + 1), dtype=torch.float32)
        results.put((rank, parallel.all_reduce_sum([loss, rank == 1, 2], torch.device("cpu"))))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_one_reduction_sums_a_device_loss_and_host_flags_over_the_ranks(tmp_path):
    """Two real gloo ranks (spawned: the test process runs torch's threads): each gets the sums of both."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    ranks = [ctx.Process(target=_reduce_as, args=(r, str(tmp_path / "store"), results)) for r in range(2)]
    for process in ranks:
        process.start()
    got = dict(results.get(timeout=120) for _ in ranks)
    for process in ranks:
        process.join(timeout=60)
    assert got == {0: [4.5, 1.0, 4.0], 1: [4.5, 1.0, 4.0]}
    assert [p.exitcode for p in ranks] == [0, 0]
