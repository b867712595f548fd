"""One loop, one writer: a Prefect global concurrency limit named after the loop, with one slot.

Two triggers of the same loop (a cron tick while a manual round runs, a double click) would otherwise
race on the same store paths and MLflow runs. The slot is leased, and beside it a Prefect variable of
the same name records who holds it (host, pid, flow run, lease).

Why both: a leased slot is freed by a Prefect *server*'s background service when its holder stops
renewing, but the temporary server that `vstar run` starts on the ephemeral API runs no such service
(and keeps leases in memory, so a new one never learns of the old lease): a SIGKILLed `vstar run`
would hold its loop for good. So a waiting trigger asks whether the holder is provably dead (its
process gone on this host, or its flow run in a final state) and, if so, reclaims the slot at once.
A holder on another host whose flow run still looks alive is waited for: a server frees its slot
after `LEASE_S` seconds without renewal.

Races, closed:
- Two waiters that both find the holder dead: only the one that creates the variable
  `<limit>-reclaim-<dead lease>` (Prefect refuses a second variable of one name: the API's
  compare-and-set) frees the slot; the other waits for the slot like any trigger.
- The slot's count is reset only where the server has forgotten the dead lease (a temporary server,
  or one restarted: leases live in its memory), never when it still knows it (then the lease is
  released, which frees exactly its slot), and never once a newer holder is recorded: the record
  is read again `GRACE_S` after the decision, time for a run that just took the slot to write it.
- A holder whose lease renewal fails (the server unreachable past Prefect's retries) stops: its
  slot may be given to another run, so it must not go on writing (LockLost; what it published stays,
  the stage it was in publishes nothing, and a rerun resumes).
- "This host" is the kernel's boot id and the PID namespace, not the host name, which containers
  with PID namespaces of their own share.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from uuid import UUID

import psutil
from prefect import get_client
from prefect.logging import get_logger
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate, VariableCreate
from prefect.concurrency._leases import maintain_concurrency_lease
from prefect.concurrency._sync import release_concurrency_slots_with_lease
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError

LEASE_S = 60  # the server's minimum: how long a dead holder on another host keeps the loop locked
POLL_S = 2.0  # how often a waiting trigger asks again (and re-checks the holder)
GRACE_S = 2.0  # before a forgotten lease's slot is reset: a run that just took the slot has recorded itself
log = get_logger("vstar.lock")  # a child of Prefect's logger: printed by `vstar`, kept by a flow run

# Locks this process holds (limit name -> holder record): `vstar run` takes its loop's lock before
# the flow starts, so the flow's own `loop_lock` finds it held here and only notes its flow run.
_HELD: dict[str, dict] = {}


class LoopBusy(RuntimeError):
    """Another live run holds this loop."""


class LockLost(RuntimeError):
    """This run's lease could not be renewed: another run may hold the loop now."""


def machine_id() -> str:
    """What tells this process's pids apart from another machine's or container's: the kernel's boot
    id and the inode of this process's PID namespace (the host name, before: shared by containers)."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux
        return socket.gethostname()


def limit_name(loop_id: str) -> str:
    return "vstar-loop-" + re.sub(r"[^a-z0-9-]", "-", loop_id.lower())


def _flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


def _record(lease_id: UUID) -> dict:
    me = psutil.Process()
    return {"lease_id": str(lease_id), "host": socket.gethostname(), "machine": machine_id(), "pid": me.pid,
            "pid_started": me.create_time(), "flow_run_id": _flow_run_id(),
            "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:200]}


def describe(rec: dict | None) -> str:
    if not rec:
        return "holder unknown"
    fr = f", flow run {rec['flow_run_id']}" if rec.get("flow_run_id") else ""
    return f"pid {rec['pid']} on {rec['host']} since {rec['since']}{fr}"


# ------------------------------------------------------------------------------ the holder's record

def read_holder(client, name: str) -> dict | None:
    var = client.read_variable_by_name(name)
    return var.value if var and isinstance(var.value, dict) else None


def _write_holder(client, name: str, rec: dict) -> None:
    try:
        client.delete_variable_by_name(name)
    except ObjectNotFound:
        pass
    client.create_variable(VariableCreate(name=name, value=rec))


def _drop_holder(client, name: str, lease_id: str | None) -> None:
    """Delete the record if it is still the one for `lease_id` (None: whatever it is)."""
    rec = read_holder(client, name)
    if rec is not None and (lease_id is None or rec.get("lease_id") == lease_id):
        try:
            client.delete_variable_by_name(name)
        except ObjectNotFound:
            pass


def holder_state(client, rec: dict | None) -> tuple[bool | None, str]:
    """(alive, why): False when the holder is provably dead, True when provably alive, None when it
    cannot be told from here (another host, flow run not final)."""
    if not rec:
        return None, "no holder recorded"
    if rec.get("flow_run_id"):
        try:
            fr = client.read_flow_run(UUID(rec["flow_run_id"]))
            if fr.state and fr.state.is_final():
                return False, f"its flow run {fr.name} is {fr.state.name}"
        except ObjectNotFound:
            pass
    if rec.get("machine", rec.get("host")) != (machine_id() if "machine" in rec else socket.gethostname()):
        return None, f"held from host {rec.get('host')}" + (" (another container or boot)"
                                                          if rec.get("host") == socket.gethostname() else "")
    try:
        proc = psutil.Process(rec["pid"])
        # A recycled pid is another process: compare start times.
        if abs(proc.create_time() - rec.get("pid_started", proc.create_time())) < 1 and proc.is_running() \
                and proc.status() != psutil.STATUS_ZOMBIE:
            return True, f"process {rec['pid']} is running"
    except psutil.NoSuchProcess:
        pass
    return False, f"process {rec['pid']} on this host is gone"


def _claim(client, name: str, lease_id: str) -> bool:
    """Whether this process is the one that reclaims `lease_id` (compare-and-set: the variable's
    creation succeeds once). Claims older than an hour are cleared on the way: their waiters are gone."""
    try:
        client.create_variable(VariableCreate(name=f"{name}-reclaim-{lease_id}", value={"by": machine_id(),
                                                                                       "pid": os.getpid()}))
    except ObjectAlreadyExists:
        return False
    old = datetime.now(timezone.utc).timestamp() - 3600
    for var in client.read_variables():
        if var.name.startswith(f"{name}-reclaim-") and var.created and var.created.timestamp() < old:
            with contextlib.suppress(ObjectNotFound):
                client.delete_variable_by_name(var.name)
    return True


def _server_knows(client, lease_id: str) -> bool:
    """Whether the server still holds this lease (renewed, then released at once by the caller)."""
    try:
        client.renew_concurrency_lease(UUID(lease_id), LEASE_S)
        return True
    except PrefectHTTPStatusError as e:
        if e.response.status_code in (404, 410):
            return False
        raise


def _reclaim(client, name: str, rec: dict | None, why: str) -> bool:
    """Free the slot of a dead holder, once (module docstring): release its lease where the server
    still knows it, else reset the count. False when another waiter is reclaiming it."""
    if rec and rec.get("lease_id"):
        if not _claim(client, name, rec["lease_id"]):
            return False
        if _server_knows(client, rec["lease_id"]):
            release_concurrency_slots_with_lease(UUID(rec["lease_id"]))  # exactly its slot
        else:
            time.sleep(GRACE_S)
            _reset_unless_held(client, name, rec)
    else:  # by hand (`vstar unlock --force`) with no record
        _reset_unless_held(client, name, rec)
    _drop_holder(client, name, rec.get("lease_id") if rec else None)
    _mark_crashed(client, rec, why)
    log.warning("%s: previous holder is dead (%s; %s): lock reclaimed", name, why, describe(rec))
    return True


def _mark_crashed(client, rec: dict | None, why: str) -> None:
    """Say so in Prefect too: a killed run's flow run would look Running forever."""
    if not (rec and rec.get("flow_run_id")):
        return
    from prefect.states import Crashed

    try:
        fr = client.read_flow_run(UUID(rec["flow_run_id"]))
        if not (fr.state and fr.state.is_final()):
            client.set_flow_run_state(fr.id, Crashed(message=f"vstar lock reclaimed: {why}"), force=True)
    except ObjectNotFound:
        pass


def _expired(client, name: str, rec: dict | None) -> None:
    """The slot was free, yet a holder is still recorded: the server expired its lease (it died
    without releasing, and no waiter reclaimed it within `LEASE_S`). Said like a reclaim, and its flow
    run marked, or how it ended would depend on how long the next run took to start."""
    alive, why = holder_state(client, rec)
    if alive:  # lost its lease but runs on: it stops at its next renewal (LockLost)
        log.warning("%s: the previous holder's lease expired while it runs (%s; %s): it stops at its next "
                    "renewal", name, why, describe(rec))
        return
    _mark_crashed(client, rec, why)
    log.warning("%s: previous holder is dead (%s; %s): its lease expired, lock reclaimed", name, why, describe(rec))


def _reset_unless_held(client, name: str, rec: dict | None) -> None:
    now = read_holder(client, name)
    if now and (rec is None or now.get("lease_id") != rec.get("lease_id")):
        return  # a newer holder took the slot: its count is its own
    if client.read_global_concurrency_limit_by_name(name).active_slots > 0:
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))


def _ensure_limit(client, name: str) -> None:
    # `concurrency()` ignores a limit that does not exist (non-strict) or fails (strict): create it.
    try:
        client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:  # a concurrent trigger created it first
            pass


# --------------------------------------------------------------------------------------- the lock

def _acquire(client, name: str, loop_id: str, wait_s: float) -> UUID:
    deadline = time.monotonic() + wait_s
    while True:
        try:  # one try at a time (Prefect's own waiting logs an error per timeout): we check the holder between
            return UUID(client.increment_concurrency_slots_with_lease(
                names=[name], slots=1, mode="concurrency", lease_duration=LEASE_S).json()["lease_id"])
        except PrefectHTTPStatusError as e:
            if e.response.status_code != 423:  # 423 Locked: the slot is taken
                raise
        rec = read_holder(client, name)
        alive, why = holder_state(client, rec)
        if alive is False:
            if not _reclaim(client, name, rec, why):
                time.sleep(POLL_S)  # another waiter is freeing it: then the slot is whoever's takes it first
            continue
        if time.monotonic() >= deadline:
            hint = (f"if it is gone, `vstar unlock {loop_id}`" if alive else
                    f"a server frees a dead holder's slot within {LEASE_S} s; `vstar unlock {loop_id} --force` "
                    f"clears it now")
            raise LoopBusy(f"loop {loop_id} is already running ({describe(rec)}; {why}). "
                           f"Wait for it to finish; {hint}.")
        time.sleep(POLL_S)


@contextmanager
def loop_lock(loop_id: str, wait_s: float = 5.0):
    """Hold the loop's slot for the block; LoopBusy when a live holder keeps it for `wait_s` seconds.
    Re-entrant within a process (the CLI holds it around the flow that holds it too)."""
    name = limit_name(loop_id)
    with get_client(sync_client=True) as client:
        if name in _HELD:
            held = _HELD[name]
            if held.get("flow_run_id") is None and _flow_run_id():  # name the flow run in the record
                held["flow_run_id"] = _flow_run_id()
                _write_holder(client, name, held)
            yield
            return
        _ensure_limit(client, name)
        lease_id = _acquire(client, name, loop_id, wait_s)
        if (prev := read_holder(client, name)) and prev.get("lease_id") != str(lease_id):
            _expired(client, name, prev)
        rec = _record(lease_id)
        _write_holder(client, name, rec)
        _HELD[name] = rec
        log.info("holding %s: no other run writes to loop %s meanwhile", name, loop_id)
        try:
            # A renewal that fails for good cancels the block (Prefect injects CancelledError into this
            # thread; a stage child is killed by isolation's wait): another run may get the slot now.
            try:
                with maintain_concurrency_lease(lease_id, LEASE_S, raise_on_lease_renewal_failure=True):
                    yield
            except asyncio.CancelledError as e:
                if _still_leased(lease_id):
                    raise  # a cancellation of another kind
                raise LockLost(f"loop {loop_id}: the lock's lease could not be renewed (Prefect API unreachable), "
                               f"so another run may hold the loop now: this run stopped; what it published stays, "
                               f"rerun to go on") from e
        finally:
            _HELD.pop(name, None)
            try:
                _drop_holder(client, name, rec["lease_id"])
                release_concurrency_slots_with_lease(lease_id)
            except Exception as e:  # the API is gone: what the run did stands; it must not hide why it ended
                log.warning("%s: could not release the lock (%s); a server frees it within %d s, `vstar unlock %s` "
                            "otherwise", name, e, LEASE_S, loop_id)


def _still_leased(lease_id: UUID) -> bool:
    try:
        with get_client(sync_client=True) as client:
            client.renew_concurrency_lease(lease_id, LEASE_S)
        return True
    except Exception:  # unreachable, or the lease is gone
        return False


def unlock(loop_id: str, force: bool = False) -> str:
    """Free a loop's slot by hand: refused while its holder is alive (or unknown) unless `force`."""
    name = limit_name(loop_id)
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return f"loop {loop_id} has never been locked here (no limit {name})"
        rec = read_holder(client, name)
        if limit.active_slots == 0:
            _drop_holder(client, name, None)
            return f"loop {loop_id} is not locked"
        alive, why = holder_state(client, rec)
        if alive is not False and not force:
            raise LoopBusy(f"loop {loop_id} is held by a holder that may be alive ({describe(rec)}; {why}); "
                           f"stop it first, or `vstar unlock {loop_id} --force` if you know it is gone")
        if alive is not False:
            log.warning("forcing %s open although its holder may be alive (%s)", name, why)
        _reclaim(client, name, rec, why if alive is False else f"forced by hand ({why})")
        return f"loop {loop_id} unlocked ({why}; was {describe(rec)})"


def lock_state(loop_id: str) -> tuple[bool | None, str]:
    """(alive, what to say) of the loop's holder for `vstar status`: alive is None when nothing holds
    the loop or whether its holder lives cannot be told from here."""
    name = limit_name(loop_id)
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return None, "never locked here"
        if limit.active_slots == 0:
            return None, "not locked"
        rec = read_holder(client, name)
        alive, why = holder_state(client, rec)
        return alive, f"held by {describe(rec)}; {why}"
