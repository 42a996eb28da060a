"""The training loop's host-side pieces (fast, no process group): the stop request's polling, the one reduction."""

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


def test_one_reduction_carries_a_device_loss_and_host_flags():
    loss = torch.tensor(3.25, dtype=torch.float64)
    assert parallel.all_reduce_sum([loss, True, 2], torch.device("cpu")) == [3.25, 1.0, 2.0]
