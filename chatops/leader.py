"""One bot leads, the others stand by: the process side of the leader lease (see store/lease.py).

`await leadership.wait_until_leader()` returns once this bot holds the lease (saying, in one line,
who leads while it waits); `renew()` keeps it; `acting()` is false as soon as this bot cannot be
sure it still leads (its own clock: the last successful renewal + the lease, minus a margin), so it
stops acting before a standby can take over. The store's fence makes the database refuse any write
under a stale term, for the case where this process is frozen between the check and the write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .store import LeaseLostError, LeaseState, Store, this_holder
from .store.db import Database

log = logging.getLogger(__name__)


class Leadership:
    def __init__(self, store: Store, lease_sec: float, *, holder: str | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.lease_sec = lease_sec
        self.holder = holder or this_holder()
        self.term: int | None = None
        self._deadline = 0.0  # monotonic: this bot may act until then
        self.say = say or (lambda line: log.warning("%s", line))
        self.renew_every = lease_sec / 3
        self.poll_every = min(max(lease_sec / 10, 0.2), 2.0)
        self.lost = asyncio.Event()  # set once this bot lost the lease: its runner stops
        self._renewer: asyncio.Task | None = None

    # --- the lease -------------------------------------------------------------------------

    def _try(self) -> LeaseState:
        t0 = time.monotonic()
        st = self.store.acquire_lease(self.holder, self.lease_sec, self.term)
        if st.mine:
            self.term = st.term
            self._deadline = t0 + self.lease_sec - min(1.0, self.lease_sec / 10)
            self.store.fence = self._fence
        return st

    async def wait_until_leader(self) -> int:
        """Stand by until this bot holds the lease; returns its term."""
        said: tuple | None = None
        while True:
            try:
                st = await asyncio.to_thread(self._try)
            except Exception as exc:  # a database hiccup: say it, look again
                log.error("standby: could not read the leader lease: %s", exc)
                await asyncio.sleep(self.poll_every)
                continue
            if st.mine:
                self.say(f"leader: {self.holder} leads this database (term {st.term}, lease {self.lease_sec:g}s)")
                # Renew from now on, whatever else this bot is busy with (reconcile, channels starting).
                self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())
                return st.term
            if said != (st.holder, st.term):
                said = (st.holder, st.term)
                self.say(f"standby: {st.holder} leads (term {st.term}); this bot ({self.holder}) takes over if it "
                         f"stops renewing its {self.lease_sec:g}s lease")
            await asyncio.sleep(self.poll_every)

    async def _renew_loop(self) -> None:
        while self.term is not None:
            await asyncio.sleep(self.renew_every)
            if self.term is None:
                return
            if not await asyncio.to_thread(self.renew):
                self.lost.set()
                return

    def renew(self) -> bool:
        """Keep the lease; False (and acting() False from now on) if it was lost."""
        if self.term is None:
            return False
        try:
            st = self._try()
        except Exception as exc:  # the database is unreachable: keep acting only until the deadline
            log.error("could not renew the leader lease: %s", exc)
            return self.acting()
        if not st.mine:
            self.lose(f"the lease passed to {st.holder} (term {st.term})")
            return False
        return True

    def acting(self) -> bool:
        return self.term is not None and time.monotonic() < self._deadline

    def lose(self, why: str) -> None:
        if self.term is not None:
            self.say(f"lost the leader lease (term {self.term}): {why}; stopping")
        self._deadline = 0.0
        self.lost.set()

    def _fence(self, db: Database) -> None:
        if self.term is None or not self.acting():
            raise LeaseLostError(f"this bot's leader lease (term {self.term}) is no longer valid: write refused")
        self.store.fence_write(db, self.term)

    def release(self) -> None:
        """A clean stop: hand the lease back so a standby takes over at once."""
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        if self.term is None:
            self.store.forget_bot(self.holder)
            return
        try:
            self.store.release_lease(self.holder, self.term)
        finally:
            self.store.fence = None
            self.term = None
