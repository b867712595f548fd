"""The loop's lock under the races a review found (flows/lock.py's docstring): two waiters reclaiming
one dead holder at the same moment, and a holder whose lease renewal fails. Real Prefect servers and
processes; where a race needs an interleaving the machine will not produce on demand, the waiter
script slows one of its own steps (the fault: a slow API call between two requests)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.procs import descendants, left_behind, wait_for

ROOT = Path(__file__).resolve().parent.parent

HOLDER = """
import sys, time
from flows.lock import loop_lock
with loop_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""

# A waiter that, at a given moment, asks for the loop and, once it holds it, says when, keeps it 4 s
# and says when it let go. `decide_delay`:
# seconds it pauses after finding the holder dead, before reclaiming; `write_delay`: before writing
# its own holder record once it has the slot.
WAITER = """
import sys, time
from flows import lock
loop, decide_delay, write_delay = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
state, write = lock.holder_state, lock._write_holder

def slow_state(client, rec):
    alive, why = state(client, rec)
    if alive is False:
        time.sleep(decide_delay)
    return alive, why

def slow_write(client, name, rec):
    time.sleep(write_delay)
    write(client, name, rec)

lock.holder_state, lock._write_holder = slow_state, slow_write
time.sleep(max(0.0, float(sys.argv[4]) - time.time()))  # both waiters start at the same moment
with lock.loop_lock(loop, wait_s=120):
    print("held", time.time(), flush=True)
    time.sleep(4)
    print("released", time.time(), flush=True)
"""


def _python(script: str, *args: str, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _until_held(p: subprocess.Popen) -> None:
    """Read the process's output (the lock logs a line of its own first) until it says it holds the loop."""
    for line in p.stdout:
        if line.strip() == "held":
            return
    raise AssertionError(f"exited {p.wait()} before holding the loop")


def test_two_waiters_reclaiming_one_dead_holder_at_once_hold_it_one_after_the_other(prefect_server):
    """Both find the holder SIGKILLed. A reclaims, takes the slot and is slow to record itself; B, a
    moment behind, reclaims the same dead holder: before, it found no record, reset the slot's count
    and took the loop beside A. Now B's claim on that dead lease is refused and it waits for A."""
    loop = f"race-{os.getpid()}"
    holder = _python(HOLDER, loop)
    _until_held(holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    at = str(time.time() + 15)  # after both have imported Prefect
    a, b = _python(WAITER, loop, "0", "3", at), _python(WAITER, loop, "2", "0", at)
    out = {}
    for name, p in (("a", a), ("b", b)):
        text, _ = p.communicate(timeout=180)
        assert p.returncode == 0, text
        times = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                 if line.startswith(("held ", "released "))}
        out[name] = (times["held"], times["released"])
    (a0, a1), (b0, b1) = sorted(out.values())
    assert b0 >= a1, f"two holders at once: {out}"


def test_a_holder_whose_lease_cannot_be_renewed_stops_with_its_stage(tmp_path):
    """The Prefect server goes away under a holder: its lease can no longer be renewed, so another run
    may get the slot. The holder stops (LockLost, one message) and its stage child goes with it."""
    from components.localstack import services

    # A stack of its own: stopping a second server of the session's stack would restore the worker's
    # environment to before the first (PREFECT_API_URL gone for the tests after this one).
    service_stack = services.ServiceStack(tmp_path / "lost-lease")
    server = service_stack.prefect_server()
    script = """
import sys
import prefect.concurrency._leases as leases
leases._RENEWAL_FRACTION = 0.02  # renew every ~1 s instead of every 45 s: the test need not wait
from components.runtime.isolation import call_isolated
from flows.lock import loop_lock
with loop_lock(sys.argv[1]):
    print("held", flush=True)
    call_isolated("tests.procs:sleep", {"seconds": 600}, "sleep", sys.argv[2])
"""
    p = _python(script, f"lost-{os.getpid()}", str(server.home / "logs"), env={"PREFECT_API_URL": server.api_url, "VSTAR_WARM_START": "0",
                                                                               "PREFECT_CLIENT_MAX_RETRIES": "0"})  # its own retries: ~1 min per renewal try
    try:
        _until_held(p)
        child = wait_for(lambda: [k for k in descendants(p.pid) if "tests.procs:sleep" in " ".join(k.cmdline())],
                         120, "the stage child")
        service_stack.stop(server.service)
        text, _ = p.communicate(timeout=120)
        assert p.returncode != 0
        assert "LockLost: loop lost-" in text and "the lock's lease could not be renewed" in text, text[-3000:]
        assert left_behind(child) == []
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        service_stack.close()


def test_a_dead_holder_whose_lease_expired_is_named_and_its_flow_run_marked(prefect_server):
    """A SIGKILLed holder that no waiter reclaimed within the lease: the server expires its lease and
    the next run finds the slot free. Before, it took the loop without a word and the dead run's flow
    run stayed Running for good (CI: the fault matrix's kill test said nothing on a slow restart).
    The server's expiry comes after 60 s; the test releases the lease as the server would."""
    import logging
    from uuid import UUID

    from prefect import get_client
    from prefect.concurrency._sync import release_concurrency_slots_with_lease

    from flows import lock

    script = """
import sys, time
from prefect import flow
from flows.lock import loop_lock

@flow
def hold(loop: str):
    with loop_lock(loop):
        print("held", flush=True)
        time.sleep(600)

hold(sys.argv[1])
"""
    loop = f"expired-{os.getpid()}"
    holder = _python(script, loop)
    _until_held(holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    name = lock.limit_name(loop)
    with get_client(sync_client=True) as client:
        rec = lock.read_holder(client, name)
    release_concurrency_slots_with_lease(UUID(rec["lease_id"]))  # what the server's lease expiry does
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # Prefect's loggers do not propagate to pytest's capture
    lock.log.addHandler(handler)
    try:
        with lock.loop_lock(loop):
            pass
    finally:
        lock.log.removeHandler(handler)
    said = "\n".join(r.getMessage() for r in records)
    assert "its lease expired, lock reclaimed" in said and f"process {holder.pid} on this host is gone" in said, said
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(rec["flow_run_id"])).state
    assert state.name == "Crashed" and "lock reclaimed" in state.message, state
