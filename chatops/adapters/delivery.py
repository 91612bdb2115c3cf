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

from agent.clock import market_seconds
from chatops.redact import redact_value
from chatops.render import Card

from .base import CoreAPI

_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=timezone.utc)

# Within one destination's queue, lower goes first (same priority: in order).
PRIORITY_CARD, PRIORITY_ALERT, PRIORITY_REPLY = 0, 1, 2
_STOP = 99
MAX_SENDERS = 256  # sender tasks at once; past it, replies to a new destination are dropped (logged)
GIVE_UP_AFTER = timedelta(days=1)  # an outbox item older than this is given up, with an alert


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
    priority: int = 2  # PRIORITY_*: cards and alerts never wait behind replies in one chat's queue

    @classmethod
    def for_proposal(cls, dest: str, proposal_id: int) -> Any:
        return cls("proposal", dest, proposal_id=proposal_id, priority=PRIORITY_CARD)

    def payload(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_payload(cls, p: dict[str, Any], outbox_id: int, attempts: int) -> Any:
        raise NotImplementedError


class OncePer:
    """At most one `first(key)` True per `seconds` per key (a "not authorized" per chat per hour):
    a stranger's flood costs a dictionary entry, not a queue of replies. Bounded in size."""

    def __init__(self, seconds: float = 3600.0, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000) -> None:
        self.seconds = seconds
        self.clock = clock
        self.max_keys = max_keys
        self._last: dict[str, float] = {}

    def first(self, key: str) -> bool:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.seconds:
            return False
        if len(self._last) >= self.max_keys:
            self._last = {k: t for k, t in self._last.items() if now - t < self.seconds}
            if len(self._last) >= self.max_keys:
                return False  # under a flood of new chats: say nothing rather than grow
        self._last[key] = now
        return True


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
                 wall_clock_retries: bool, leftovers_due_now: bool, keep_interrupted: bool,
                 max_attempts: int = 20, on_give_up: Callable[[QueuedJob, str], Any] | None = None,
                 max_senders: int = MAX_SENDERS) -> None:
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
        self.max_attempts = max_attempts  # OUTBOX_MAX_ATTEMPTS: then (or after a day) given up, with an alert
        self.on_give_up = on_give_up
        self.max_senders = max_senders
        self.stopping = False  # set by the adapter when it starts to stop: new destinations go to the outbox
        self.cards: dict[int, Card] = {}  # proposal id -> the newest card to show (the adapter may drop it)
        self._seq = 0  # keeps one priority in order
        self._queues: dict[str, asyncio.PriorityQueue[tuple[int, int, QueuedJob | None]]] = {}
        self._workers: dict[str, asyncio.Task] = {}
        self._inflight: dict[str, QueuedJob] = {}
        self._outbox_queued: set[int] = set()
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
            if len(self._workers) >= self.max_senders and job.priority >= PRIORITY_REPLY and job.outbox_id is None:
                # A flood of new destinations (strangers' DMs): the bot's own cards and alerts still go.
                self.stats["dropped"] = self.stats.get("dropped", 0) + 1
                self.log.warning("%s: %d senders busy: reply to %s dropped", self.channel, len(self._workers), dest)
                return
            q = self._queues[dest] = asyncio.PriorityQueue()
            self._workers[dest] = asyncio.get_running_loop().create_task(self._worker(dest, q),
                                                                         name=f"{self.channel}-send-{dest}")
        self._seq += 1
        q.put_nowait((job.priority, self._seq, job))

    @property
    def busy(self) -> bool:
        """A job is queued or being delivered (for the adapters' idle(): tests, benchmarks)."""
        return any(not q.empty() for q in self._queues.values()) or bool(self._inflight)

    @property
    def senders(self) -> int:
        """Sender tasks alive (one per destination with something to send; reaped when idle)."""
        return len(self._workers)

    async def _worker(self, dest: str, q: asyncio.PriorityQueue[tuple[int, int, QueuedJob | None]]) -> None:
        while True:
            if q.empty() and not self.stopping:
                # Reaped as soon as its queue is empty (no await between the check and the removal,
                # so enqueue() sees either a live worker or none): 3,000 strangers leave no tasks.
                self._queues.pop(dest, None)
                self._workers.pop(dest, None)
                return
            _, _, job = await q.get()
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
                    self.stats["outbox_delivered"] += 1
            finally:
                if job.outbox_id is not None:
                    self._outbox_queued.discard(job.outbox_id)
                self._inflight.pop(dest, None)

    # --- the outbox ------------------------------------------------------------------------------------

    @staticmethod
    def _market(core: object, wall_s: float) -> timedelta:
        """A retry delay (wall time) as the store's market time: PAPER_SPEED must not make it a flood."""
        return timedelta(seconds=market_seconds(getattr(core, "clock", None), wall_s))

    def _due(self, store: Any, core: object, wall_s: float) -> datetime:
        """When an item is next tried, on the clock `_now` reads: a wall delay as it is on the wall
        clock, as market time on the store's clock."""
        if self.wall_clock_retries:
            return self._now(store) + timedelta(seconds=wall_s)
        return self._now(store) + self._market(core, wall_s)

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
                                                     next_attempt_at=self._due(store, core, delay),
                                                     priority=job.priority)
                job.attempts = 1
                self.stats["outboxed"] += 1
                self.log.warning("%s: message kept in the outbox (#%d) after: %s", self.channel, job.outbox_id, error)
            else:
                job.attempts += 1
                item = store.outbox_item(job.outbox_id)
                too_old = item is not None and store.now() - item.created_at >= GIVE_UP_AFTER
                if job.attempts >= self.max_attempts or too_old:
                    store.give_up_outbox(job.outbox_id, f"gave up after {job.attempts} attempts: {error}")
                    self._outbox_queued.discard(job.outbox_id)
                    self.stats["given_up"] = self.stats.get("given_up", 0) + 1
                    self.log.error("%s: gave up delivering outbox #%d after %d attempts: %s", self.channel,
                                   job.outbox_id, job.attempts, error)
                    self._alert_given_up(core, job, error)
                    return
                delay = min(self.outbox_backoff_max, self.outbox_interval * 2 ** max(job.attempts - 1, 0))
                store.mark_outbox_attempt(job.outbox_id, error, self._due(store, core, delay))
                self._outbox_queued.discard(job.outbox_id)
        except Exception:
            self.log.exception("%s: could not record an undelivered message in the outbox", self.channel)

    def retry_outbox(self) -> int:
        """Queue the due outbox items (oldest first); returns how many were queued."""
        core = self.core()
        if core is None:
            return 0
        store = core.store  # type: ignore[attr-defined]
        # Due rows are chosen in SQL, before the limit (cards and alerts first), on the clock the
        # retry times were written with: a pile of undeliverable replies cannot starve a card.
        items = store.due_outbox(self.channel, now=self._now(store))
        n = 0
        for item in items:
            if item.id in self._outbox_queued:
                continue
            self._outbox_queued.add(item.id)
            job = self.job_type.from_payload(item.payload, item.id, item.attempts)
            job.priority = int(item.payload.get("_priority", job.priority))
            self.enqueue(job)
            n += 1
        return n

    def _alert_given_up(self, core: Any, job: QueuedJob, error: str) -> None:
        """Say so on the other channels (not this one: its alert could only fail the same way)."""
        if self.on_give_up is not None:
            self.on_give_up(job, error)
            return
        notify = getattr(core, "notify", None)
        if notify is None:
            return
        text = (f"{self.channel}: gave up delivering a message to {job.dest} after {job.attempts} attempts "
                f"({error[:200]})" + (f"; it was about #{job.proposal_id}" if job.proposal_id else ""))
        try:
            asyncio.get_running_loop().create_task(notify("failure", text, skip=self.channel))
        except RuntimeError:  # no loop (a synchronous caller): the log line above has it
            pass

    def _now(self, store: Any) -> datetime:
        """The clock of this channel's outbox times: wall time (Telegram: the store's clock may be a
        simulated market clock, while retry delays are about the platform) or the store's (Slack)."""
        return datetime.now(timezone.utc) if self.wall_clock_retries else store.now()

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
            self._seq += 1
            q.put_nowait((_STOP, self._seq, None))
        workers = list(self._workers.values())
        if workers:
            _, pending = await asyncio.wait(workers, timeout=timeout)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Whatever did not go out is kept for the next start (the job a sender was in: see _worker).
        for q in self._queues.values():
            while not q.empty():
                _, _, job = q.get_nowait()
                if job is not None:
                    self.to_outbox(job, "not sent before shutdown", leftover=True)
        self._queues.clear()
        self._workers.clear()
        self._inflight.clear()
