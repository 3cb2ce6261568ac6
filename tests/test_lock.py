"""One writer per run folder (issue 35, item 4): a second fit, resume or diagnose writing
into a folder another live process holds fails at once naming the holder; a lock left by a
killed process is taken over; the holder's lock goes when it ends."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from pyro_skipvae import SkipVAE
from pyro_skipvae.errors import RunLockedError
from pyro_skipvae.evaluation import diagnose_run
from pyro_skipvae.lock import LOCK_FILE, holder_info, is_stale, locked, process_start

DATA = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0))

HOLD = """
import sys, time
from pyro_skipvae.lock import locked
with locked(sys.argv[1], "test holder"):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def held(tmp_path):
    """A run folder whose lock another live process holds; yields (folder, its pid)."""
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    yield folder, holder.pid
    holder.kill()
    holder.wait()


def fit(run_dir, **options):
    vae = SkipVAE((1, 4, 4), latent_dim=2, hidden_dims=(8,), seed=0)
    return vae.fit(
        DATA, num_epochs=1, batch_size=10, binarize="dynamic", run_dir=run_dir, **options
    )


def test_a_second_writer_fails_at_once_naming_the_holder(held):
    folder, pid = held
    start = time.monotonic()
    for attempt in (lambda: fit(folder), lambda: fit(folder, resume=True)):
        with pytest.raises(RunLockedError) as error:
            attempt()
        message = str(error.value)
        assert f"pid {pid}" in message and socket.gethostname() in message
        assert "since 20" in message and "test holder" in message
    with pytest.raises(RunLockedError, match=f"pid {pid}"):
        diagnose_run(folder)  # writes into the folder by default
    assert time.monotonic() - start < 5
    assert not (folder / "config.json").exists()  # the loser wrote nothing


def test_the_lock_is_released_when_the_fit_ends_and_on_an_error(tmp_path):
    fit(tmp_path / "run")
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    with pytest.raises(ValueError), locked(tmp_path / "other", "test"):
        assert (tmp_path / "other" / LOCK_FILE).exists()
        raise ValueError("boom")
    assert not (tmp_path / "other" / LOCK_FILE).exists()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with locked(tmp_path, "outer"):
        with locked(tmp_path, "inner"):
            pass
        assert json.loads((tmp_path / LOCK_FILE).read_text())["purpose"] == "outer"
    assert not (tmp_path / LOCK_FILE).exists()


def _dead_pid():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    stale = {**holder_info("killed fit"), "pid": _dead_pid()}
    (folder / LOCK_FILE).write_text(json.dumps(stale))
    assert is_stale(folder / LOCK_FILE, stale)
    history = fit(folder)
    assert [r["epoch"] for r in history] == [1]
    assert not (folder / LOCK_FILE).exists()


def test_a_reused_pid_is_told_from_the_holder_by_its_start_time(tmp_path):
    assert process_start(os.getpid()) is not None
    me = holder_info("me")
    assert not is_stale(tmp_path / LOCK_FILE, me)
    assert is_stale(tmp_path / LOCK_FILE, {**me, "started": "1"})


def test_another_hosts_lock_is_stale_only_after_its_heartbeat_stops(tmp_path):
    path = tmp_path / LOCK_FILE
    other = {**holder_info("remote fit"), "host": "some-other-node", "pid": 1}
    path.write_text(json.dumps(other))
    assert not is_stale(path, other, stale_after=600)
    with pytest.raises(RunLockedError, match="some-other-node"):
        with locked(tmp_path, "here"):
            pass
    old = time.time() - 3600
    os.utime(path, (old, old))
    assert is_stale(path, other, stale_after=600)
    with locked(tmp_path, "here"):
        assert json.loads(path.read_text())["host"] == socket.gethostname()


def test_the_holder_keeps_its_lock_fresh(tmp_path):
    path = tmp_path / LOCK_FILE
    with locked(tmp_path, "beating", heartbeat=0.05):
        old = time.time() - 3600
        os.utime(path, (old, old))
        time.sleep(0.3)
        assert time.time() - os.stat(path).st_mtime < 60
