"""One loop, one writer: a Prefect global concurrency limit named after the loop, with one slot.

Two triggers of the same loop (a cron tick while a manual round runs, a double click) would otherwise
race on the same store paths and MLflow runs. The slot is leased: a flow-run process that dies
(SIGKILL, lost machine) stops renewing its lease and the server frees the slot after `LEASE_S`, so
a crashed round never locks its loop for good.
"""
from __future__ import annotations

import re
from contextlib import contextmanager

from prefect import get_client, get_run_logger
from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists

from components.config import RunConfig

LEASE_S = 60  # the server's minimum: how long a dead holder keeps the loop locked


class LoopBusy(RuntimeError):
    """Another flow run holds this loop's slot."""


def limit_name(cfg: RunConfig) -> str:
    return "vstar-loop-" + re.sub(r"[^a-z0-9-]", "-", cfg.loop_id().lower())


def _ensure_limit(name: str) -> None:
    # `concurrency()` ignores a limit that does not exist (non-strict) or fails (strict): create it.
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # a concurrent trigger created it first
                pass


@contextmanager
def loop_lock(cfg: RunConfig, wait_s: float = 5.0):
    """Hold the loop's slot for the block; LoopBusy when it stays taken for `wait_s` seconds."""
    name = limit_name(cfg)
    _ensure_limit(name)
    log = get_run_logger()
    try:
        with concurrency(name, occupy=1, timeout_seconds=max(wait_s, 1.0), lease_duration=LEASE_S, strict=True):
            log.info("holding %s: no other run writes to loop %s meanwhile", name, cfg.loop_id())
            yield
    except AcquireConcurrencySlotTimeoutError:  # only acquisition: a TimeoutError inside the block is not ours
        raise LoopBusy(f"loop {cfg.loop_id()} is already running in another flow run (concurrency limit {name} "
                       f"has its one slot taken; waited {wait_s:.0f} s). Wait for it to finish, or, if it "
                       f"crashed, for its lease to expire (<= {LEASE_S} s).") from None
