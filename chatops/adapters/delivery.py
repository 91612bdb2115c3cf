"""Outgoing delivery shared by the chat adapters: a queue and one sender task per destination, and
the store's outbox for what could not be delivered.

Why it exists: every channel makes the same promises (sending never blocks the decision loop;
messages to one chat go out in order; a message is delivered at least once, also across a
restart), and two copies of that bookkeeping drift apart. What differs between platforms stays
in the adapter: what a job holds (the platform's message and how it is stored), how it is sent
(API calls, pacing, error classification) and how it is rendered. The adapter hands over a
`deliver(job)` coroutine and names the exceptions that mean "the platform will not take it now:
keep it in the outbox".

Pacing is not done here but in each adapter's request wrapper, because limits apply per API
request and one job can be several requests (long text in chunks, a card edited in several chats,
a plain-text retry, a rate-limit wait).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

from chatops.redact import redact_value
from chatops.render import Card

from .base import CoreAPI

_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=timezone.utc)


@dataclass
class QueuedJob:
    """One message for one destination, as the queue and the outbox see it. Each adapter
    subclasses it with the message itself and the form the outbox stores it in (`payload`,
    `from_payload`: a stored payload is read back by a later run, so that form stays stable)."""

    op: str  # "proposal": post or edit the card of `proposal_id`; else one of the adapter's own kinds
    dest: str  # the chat or channel: one queue, and one sender task, per destination
    proposal_id: int | None = None
    outbox_id: int | None = None  # set once the job has a row in the store's outbox
    attempts: int = 0  # failed deliveries so far, as the outbox counts them

    @classmethod
    def for_proposal(cls, dest: str, proposal_id: int) -> Any:
        return cls("proposal", dest, proposal_id=proposal_id)

    def payload(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_payload(cls, p: dict[str, Any], outbox_id: int, attempts: int) -> Any:
        raise NotImplementedError


def redact_job(job: QueuedJob) -> None:
    """Pass every text a job carries (chunks, blocks, text) through the one redactor, in place."""
    for f in fields(job):
        value = getattr(job, f.name)
        if isinstance(value, (str, list, tuple, dict)) and f.name not in ("op", "dest"):
            setattr(job, f.name, redact_value(value))


def _redacted_card(card: Card) -> Card:
    return dataclasses.replace(card, **{f.name: redact_value(getattr(card, f.name)) for f in fields(card)
                                        if isinstance(getattr(card, f.name), (str, list, tuple))})


class DeliveryQueue:
    """Per-destination queues, their sender tasks, the outbox and the proposal cards being shown.

    `enqueue` never blocks: a sender task per destination calls `deliver(job)`. A `give_up`
    exception (or any unexpected one: a bug in one message never stops the sender) puts the job
    in the store's outbox, which `retry_outbox` sweeps at start and every `outbox_interval`
    seconds, backing off per failed attempt up to `outbox_backoff_max`.

    Three switches keep each adapter's behaviour as it was written (they could be unified):

    - `wall_clock_retries`: when an outbox item is next tried is decided on this process's wall
      clock (Telegram: the store's clock is market time, frozen or fast under a simulated clock,
      while retry delays are about the platform). Otherwise the store's clock decides (Slack).
    - `leftovers_due_now`: a job still queued at shutdown (or queued during it) is due at once on
      the next start (Telegram), rather than `outbox_interval` later (Slack).
    - `keep_interrupted`: the job a sender is in the middle of when the stop timeout cancels it
      goes to the outbox too (Telegram). Slack's own copy meant to keep it but looked for it after
      the sender had already forgotten it, so it was dropped; False keeps that.
    """

    def __init__(self, channel: str, *, core: Callable[[], CoreAPI | None],
                 deliver: Callable[[Any], Awaitable[None]],  # (the adapter's job) -> delivered, or raises
                 give_up: tuple[type[Exception], ...],
                 job_type: type[QueuedJob],
                 outbox_interval: float, outbox_backoff_max: float,
                 clean: Callable[[str], str], stats: dict[str, int], log: logging.Logger,
                 wall_clock_retries: bool, leftovers_due_now: bool, keep_interrupted: bool) -> None:
        self.channel = channel  # the store's channel name; also in log lines and task names
        self.core = core  # the adapter's core once started (None before): the store and message refs
        self.deliver = deliver
        self.give_up = give_up
        self.job_type = job_type  # the adapter's QueuedJob: proposal jobs and outbox items are made as these
        self.outbox_interval = outbox_interval
        self.outbox_backoff_max = outbox_backoff_max
        self.clean = clean  # takes the adapter's secrets out of an error before it is stored or logged
        self.stats = stats  # the adapter's counters: "outboxed" and "outbox_delivered" are counted here
        self.log = log
        self.wall_clock_retries = wall_clock_retries
        self.leftovers_due_now = leftovers_due_now
        self.keep_interrupted = keep_interrupted
        self.stopping = False  # set by the adapter when it starts to stop: new destinations go to the outbox
        self.cards: dict[int, Card] = {}  # proposal id -> the newest card to show (the adapter may drop it)
        self._queues: dict[str, asyncio.Queue[QueuedJob | None]] = {}
        self._workers: dict[str, asyncio.Task] = {}
        self._inflight: dict[str, QueuedJob] = {}
        self._outbox_queued: set[int] = set()
        self._retry_at: dict[int, float] = {}  # outbox id -> time.monotonic() of its next try in this process
        self._outbox_task: asyncio.Task | None = None

    # --- proposals -------------------------------------------------------------------------------------

    def post_proposal(self, pid: int, card: Card, dest: str | None) -> None:
        """Queue the card of a new proposal for `dest`; the sender posts it, or edits the message
        it already has (the card is kept so that the newest state is what goes out)."""
        if not dest:
            return
        self.cards[pid] = _redacted_card(card)
        self.enqueue(self.job_type.for_proposal(dest, pid))

    def update_proposal(self, pid: int, card: Card, default_dest: str | None) -> None:
        """Queue bringing the proposal's message in line with `card`, in the chat where it was
        posted, else in `default_dest` (never posted yet), else nowhere."""
        self.cards[pid] = _redacted_card(card)
        core = self.core()
        refs = core.message_refs(pid, self.channel) if core else []
        dest = refs[0][0] if refs else default_dest
        if dest:
            self.enqueue(self.job_type.for_proposal(str(dest), pid))

    # --- queues and senders ----------------------------------------------------------------------------

    def enqueue(self, job: QueuedJob) -> None:
        redact_job(job)  # nothing reaches a chat (or the outbox) with a secret in it
        dest = str(job.dest)
        if self.stopping and dest not in self._workers:
            self.to_outbox(job, "queued during shutdown", leftover=True)
            return
        q = self._queues.get(dest)
        if q is None:
            q = self._queues[dest] = asyncio.Queue()
            self._workers[dest] = asyncio.get_running_loop().create_task(self._worker(dest, q),
                                                                         name=f"{self.channel}-send-{dest}")
        q.put_nowait(job)

    @property
    def busy(self) -> bool:
        """A job is queued or being delivered (for the adapters' idle(): tests, benchmarks)."""
        return any(not q.empty() for q in self._queues.values()) or bool(self._inflight)

    async def _worker(self, dest: str, q: asyncio.Queue[QueuedJob | None]) -> None:
        while True:
            job = await q.get()
            if job is None:
                return
            self._inflight[dest] = job
            try:
                await self.deliver(job)
            except self.give_up as exc:
                self.to_outbox(job, str(exc))
            except asyncio.CancelledError:
                if self.keep_interrupted:
                    self.to_outbox(job, "not sent before shutdown", leftover=True)
                raise
            except Exception as exc:  # a bug in one message never stops the sender
                self.log.exception("%s: delivering a message failed", self.channel)
                self.to_outbox(job, f"{type(exc).__name__}: {exc}")
            else:
                core = self.core()
                if job.outbox_id is not None and core is not None:
                    core.store.mark_outbox_delivered(job.outbox_id)  # type: ignore[attr-defined]
                    self._retry_at.pop(job.outbox_id, None)
                    self.stats["outbox_delivered"] += 1
            finally:
                if job.outbox_id is not None:
                    self._outbox_queued.discard(job.outbox_id)
                self._inflight.pop(dest, None)

    # --- the outbox ------------------------------------------------------------------------------------

    def to_outbox(self, job: QueuedJob, error: str, *, leftover: bool = False) -> None:
        """Record an undelivered message in the store so that a later sweep (or start) sends it.
        A new item is due after `outbox_interval`, a `leftover` of a shutdown at the next sweep
        if `leftovers_due_now`; an item that failed again backs off."""
        core = self.core()
        if core is None:
            self.log.error("%s: message lost before start: %s", self.channel, error)
            return
        store = core.store  # type: ignore[attr-defined]
        error = self.clean(error)[:500]
        try:
            if job.outbox_id is None:
                delay = 0.0 if leftover and self.leftovers_due_now else self.outbox_interval
                job.outbox_id = store.enqueue_outbox(self.channel, job.payload(), error,
                                                     next_attempt_at=store.now() + timedelta(seconds=delay))
                self.stats["outboxed"] += 1
                self.log.warning("%s: message kept in the outbox (#%d) after: %s", self.channel, job.outbox_id, error)
            else:
                delay = min(self.outbox_backoff_max, self.outbox_interval * 2 ** max(job.attempts, 0))
                store.mark_outbox_attempt(job.outbox_id, error, store.now() + timedelta(seconds=delay))
                self._outbox_queued.discard(job.outbox_id)
            if self.wall_clock_retries:
                self._retry_at[job.outbox_id] = time.monotonic() + delay
        except Exception:
            self.log.exception("%s: could not record an undelivered message in the outbox", self.channel)

    def retry_outbox(self) -> int:
        """Queue the due outbox items (oldest first); returns how many were queued."""
        core = self.core()
        if core is None:
            return 0
        store = core.store  # type: ignore[attr-defined]
        if self.wall_clock_retries:
            # Every undelivered item; which are due is decided on the wall clock (see to_outbox).
            # Items from an earlier run have no entry: they are due at once.
            now = time.monotonic()
            items = [i for i in store.due_outbox(self.channel, now=_FAR_FUTURE) if self._retry_at.get(i.id, 0.0) <= now]
        else:
            items = store.due_outbox(self.channel)
        n = 0
        for item in items:
            if item.id in self._outbox_queued:
                continue
            self._outbox_queued.add(item.id)
            self.enqueue(self.job_type.from_payload(item.payload, item.id, item.attempts))
            n += 1
        return n

    async def _outbox_loop(self) -> None:
        while True:
            try:
                self.retry_outbox()
            except Exception:
                self.log.exception("%s: outbox sweep failed", self.channel)
            await asyncio.sleep(self.outbox_interval)

    # --- life cycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Sweep the outbox now (what an earlier run left) and every `outbox_interval` seconds."""
        self._outbox_task = asyncio.get_running_loop().create_task(self._outbox_loop(), name=f"{self.channel}-outbox")

    async def stop(self, timeout: float) -> None:
        """Stop sweeping; let the senders finish what is queued within `timeout` seconds; keep the
        rest in the outbox for the next start."""
        if self._outbox_task is not None:
            self._outbox_task.cancel()
            await asyncio.gather(self._outbox_task, return_exceptions=True)
            self._outbox_task = None
        for q in self._queues.values():
            q.put_nowait(None)
        workers = list(self._workers.values())
        if workers:
            _, pending = await asyncio.wait(workers, timeout=timeout)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Whatever did not go out is kept for the next start (the job a sender was in: see _worker).
        for q in self._queues.values():
            while not q.empty():
                job = q.get_nowait()
                if job is not None:
                    self.to_outbox(job, "not sent before shutdown", leftover=True)
        self._queues.clear()
        self._workers.clear()
        self._inflight.clear()
