"""One writer per run folder (issue 35, item 4): a second fit, resume or diagnose writing
into a folder another live process holds fails at once naming the holder; a lock left by a
killed process is taken over; the holder's lock goes when it ends."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from pyro_skipvae import SkipVAE, lock
from pyro_skipvae.errors import RunLockedError
from pyro_skipvae.evaluation import diagnose_run
from pyro_skipvae.lock import (
    CLOCK_FILE,
    LOCK_FILE,
    TAKEOVER_FILE,
    holder_info,
    is_stale,
    locked,
    process_start,
    read_holder,
)

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


def test_another_thread_is_another_writer_and_no_exit_order_raises(tmp_path):
    """Re-entry is per thread: a second thread locking the same folder fails at once, with a
    message naming this process's other thread (it used to be let in as 'nested', and the
    holder's finishing first then made the other's exit raise KeyError)."""
    entered, leave, errors = threading.Event(), threading.Event(), []

    def outer():
        try:
            with locked(tmp_path, "outer thread"):
                entered.set()
                leave.wait(10)
        except BaseException as e:  # noqa: BLE001 - reported to the test's thread
            errors.append(e)

    thread = threading.Thread(target=outer)
    thread.start()
    assert entered.wait(10)
    try:
        with pytest.raises(RunLockedError) as error, locked(tmp_path, "second thread"):
            pass
    finally:
        leave.set()
        thread.join()
    message = str(error.value)
    assert "another thread of this process: outer thread" in message
    assert f"pid {os.getpid()}" in message and "remove the file" not in message
    assert errors == []
    assert not (tmp_path / LOCK_FILE).exists()
    with locked(tmp_path, "after"):  # released: the folder is free again
        pass


def test_a_lock_created_after_the_release_is_never_removed(tmp_path, monkeypatch):
    """A refused block leaves no folder, but only by removing the folder once empty: a lock
    another process creates between the release and that clean-up stays (it used to be
    listed as 'only lock files' and unlinked, letting a third writer in)."""
    folder = tmp_path / "run"
    release, holders = lock.release, []

    def release_then_another_process_locks(run_dir, mine):
        release(run_dir, mine)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
        )
        holders.append(holder)
        assert holder.stdout.readline().strip() == "held"

    monkeypatch.setattr(lock, "release", release_then_another_process_locks)
    try:
        with pytest.raises(ValueError), locked(folder, "refused fit"):
            raise ValueError("refused")
        assert read_holder(folder / LOCK_FILE)["pid"] == holders[0].pid
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_a_folder_the_lock_created_goes_when_the_block_wrote_nothing(tmp_path):
    with locked(tmp_path / "empty", "nothing"):
        pass
    assert not (tmp_path / "empty").exists()
    with locked(tmp_path / "kept", "something"):
        (tmp_path / "kept" / "config.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["config.json"]


def test_the_takeover_leaves_no_helper_files_behind(tmp_path):
    """A takeover creates the clock probe and the takeover guard; the new holder removes
    them with its lock."""
    path = tmp_path / LOCK_FILE
    other = {**holder_info("remote fit"), "host": "some-other-node", "pid": 1}
    path.write_text(json.dumps(other))
    old = time.time() - 3600
    os.utime(path, (old, old))
    with locked(tmp_path, "here"):
        assert {CLOCK_FILE, TAKEOVER_FILE} <= {p.name for p in tmp_path.iterdir()}
    assert list(tmp_path.iterdir()) == []


def test_a_diagnosis_written_below_the_run_folder_takes_its_lock(held):
    folder, pid = held
    with pytest.raises(RunLockedError, match=f"pid {pid}"):
        diagnose_run(folder, out=folder / "sub" / "d.json")
