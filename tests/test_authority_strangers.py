"""Strangers cost almost nothing (issue 11): one "not authorized" per chat per hour, cards and alerts
ahead of replies, an outbox that cannot be starved and gives up, reaped sender tasks, Slack replays
refused, button data matched whole and only from the right chat."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from chatops.adapters.base import Notice
from chatops.adapters.delivery import PRIORITY_CARD, PRIORITY_REPLY, DeliveryQueue, QueuedJob
from chatops.store import Store
from tests.slack_helpers import ALICE as SLACK_ALICE, command_form, running as slack_running, sign
from tests.test_telegram import ALICE, BOB, CHAT, STRANGER, running

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
ROOT = Path(__file__).resolve().parents[1]


async def test_sixty_stranger_commands_get_one_reply_and_the_card_goes_out_at_once(tmp_path):
    async with running(tmp_path) as h:
        for _ in range(60):
            h.fake.push_message(STRANGER, "/status", CHAT)
        await h.fake.wait_for(lambda: len(h.store.list_events(kind="unauthorized", limit=100)) == 60, timeout=20)
        pid, card = await h.tick_card()
        await h.channel.idle()
        refusals = [m for m in h.fake.sent(CHAT) if m.visible.startswith("Not authorized")]
        assert len(refusals) == 1  # once per chat per hour, however many strangers' messages
        private = await h.say(STRANGER, "hello?", chat_id=STRANGER, chat_type="private")
        assert private.visible.startswith("Not authorized")  # another chat: told once there too


async def test_cards_and_alerts_go_ahead_of_queued_replies(tmp_path):
    from chatops.adapters.telegram import TelegramOptions
    from tests.test_telegram import FAST

    slow = TelegramOptions(**{**FAST.__dict__, "min_interval": 0.05})
    async with running(tmp_path, options=slow) as h:
        for i in range(40):  # 40 replies queued for the group (2 s at this pace)
            await h.channel._send_text_job(str(CHAT), [(f"reply {i}", f"reply {i}")])
        pid, card = await h.tick_card()
        await h.channel.notify(Notice("failure", "alert!"))
        await h.channel.idle()
        order = [m.visible for m in h.fake.sent(CHAT)]
        card_at = next(i for i, t in enumerate(order) if f"#{pid} Open covered call" in t)
        alert_at = next(i for i, t in enumerate(order) if "alert!" in t)
        assert card_at < 10 and alert_at < 10  # not behind the 40 replies (a reply or two may be in flight)
        replies = [t for t in order if t.startswith("reply ")]
        assert replies == [f"reply {i}" for i in range(40)]  # replies keep their own order


def test_the_outbox_filters_due_rows_before_its_limit(tmp_path):
    s = Store(tmp_path / "chatops.db")
    try:
        later = s.now() + timedelta(hours=1)
        for i in range(150):
            s.enqueue_outbox("telegram", {"op": "text", "n": i}, "blocked", next_attempt_at=later, priority=PRIORITY_REPLY)
        card = s.enqueue_outbox("telegram", {"op": "proposal", "proposal_id": 1}, "blocked", priority=PRIORITY_CARD)
        due_reply = s.enqueue_outbox("telegram", {"op": "text", "n": "due"}, "blocked", priority=PRIORITY_REPLY)
        assert [i.id for i in s.due_outbox("telegram", limit=100)] == [card, due_reply]
        s.give_up_outbox(due_reply, "gave up")
        assert [i.id for i in s.due_outbox("telegram", now=datetime(9000, 1, 1, tzinfo=timezone.utc))][:1] == [card]
        assert due_reply not in [i.id for i in s.due_outbox("telegram", now=datetime(9000, 1, 1, tzinfo=timezone.utc),
                                                            limit=1000)]
        assert s.list_events(kind="outbox_gave_up")[0]["data"] == {"outbox_id": due_reply}
    finally:
        s.close()


class _Fail(Exception):
    pass


@dataclass
class _Job(QueuedJob):
    text: str = ""

    def payload(self) -> dict[str, Any]:
        return {"op": self.op, "dest": self.dest, "text": self.text}

    @classmethod
    def from_payload(cls, p, outbox_id, attempts):
        return cls(p["op"], p["dest"], text=p["text"], outbox_id=outbox_id, attempts=attempts)


@dataclass
class _Core:
    store: Store
    notices: list = field(default_factory=list)

    async def notify(self, kind: str, text: str, *, skip: str | None = None) -> None:
        self.notices.append((kind, text, skip))

    def message_refs(self, pid, channel):
        return []


def _queue(core: _Core, deliver, **kw) -> DeliveryQueue:
    return DeliveryQueue("telegram", core=lambda: core, deliver=deliver, give_up=(_Fail,), job_type=_Job,
                         outbox_interval=0.0, outbox_backoff_max=0.0, clean=str, stats={"outboxed": 0,
                         "outbox_delivered": 0}, log=logging.getLogger("t"), wall_clock_retries=True,
                         leftovers_due_now=True, keep_interrupted=True, **kw)


async def test_the_outbox_gives_up_after_max_attempts_and_says_so_elsewhere(tmp_path):
    core = _Core(Store(tmp_path / "chatops.db"))

    async def deliver(job):
        raise _Fail("Forbidden: bot was blocked by the user")

    q = _queue(core, deliver, max_attempts=3)
    try:
        q.enqueue(_Job("text", "555", text="hello"))
        for _ in range(10):
            await asyncio.sleep(0.02)
            q.retry_outbox()
        await asyncio.sleep(0.05)
        (item,) = core.store.iter_rows("outbox")
        assert item["attempts"] == 3 and item["last_error"].startswith("gave up after 3 attempts")
        assert q.stats["given_up"] == 1 and q.retry_outbox() == 0
        (kind, text, skip), = core.notices
        assert kind == "failure" and "gave up delivering a message to 555" in text and skip == "telegram"
    finally:
        await q.stop(1.0)
        core.store.close()


async def test_sender_tasks_are_bounded_and_reaped(tmp_path):
    core = _Core(Store(tmp_path / "chatops.db"))
    release = asyncio.Event()
    delivered = []

    async def deliver(job):
        await release.wait()
        delivered.append(job.dest)

    q = _queue(core, deliver, max_senders=5)
    try:
        for i in range(50):
            q.enqueue(_Job("text", f"stranger{i}", text="Not authorized"))
        q.enqueue(_Job("proposal", "group", proposal_id=1, priority=PRIORITY_CARD))  # the bot's own: still goes
        assert q.senders == 6 and q.stats["dropped"] == 45
        release.set()
        for _ in range(100):
            if not q.busy and q.senders == 0:
                break
            await asyncio.sleep(0.01)
        assert q.senders == 0 and sorted(delivered) == sorted([f"stranger{i}" for i in range(5)] + ["group"])
    finally:
        await q.stop(1.0)
        core.store.close()


async def test_three_hundred_stranger_dms_leave_no_sender_tasks(tmp_path):
    async with running(tmp_path) as h:
        for i in range(300):
            h.fake.push_message(10_000 + i, "hi", 10_000 + i, chat_type="private")
        await h.fake.wait_for(lambda: len(h.store.list_events(kind="unauthorized", limit=1000)) == 300, timeout=30)
        await h.channel.idle()
        assert h.channel.delivery.senders == 0
        names = [t.get_name() for t in asyncio.all_tasks()]
        assert not [n for n in names if n.startswith("telegram-send-")]


async def test_button_data_is_matched_whole_and_ids_stay_in_range(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        for data in (f"a:{pid}\n", f"a:{pid} ", f"a:0{pid}", "a:" + "9" * 13, "a:-1"):
            answer = await h.press(ALICE, data, card.message_id)
            assert answer["show_alert"] is True and "Unknown button" in answer["text"], repr(data)
        assert h.status(pid) == "pending"


async def test_presses_count_only_in_the_configured_chat_or_the_pressers_private_chat(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        elsewhere = await h.press(ALICE, f"a:{pid}", card.message_id, chat_id=-2002)  # a card forwarded to a group
        assert elsewhere["show_alert"] is True and "only works in the bot's chat" in elsewhere["text"]
        others = await h.press(ALICE, f"a:{pid}", card.message_id, chat_id=BOB)  # someone else's private chat
        assert others["show_alert"] is True and h.status(pid) == "pending" and not h.store.votes(pid)
        own = await h.press(ALICE, f"a:{pid}", card.message_id, chat_id=ALICE)  # her own chat with the bot
        assert "approved" in own["text"]


def test_an_id_out_of_range_is_one_line_on_the_cli(tmp_path):
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "DATABASE_PATH": str(tmp_path / "x.db"),
           "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "chatops", "approve", "9" * 30], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "is not a proposal number" in done.stderr and "Traceback" not in done.stderr


async def test_a_replayed_signed_slack_request_is_refused(tmp_path):
    async with slack_running(tmp_path) as h:
        await h.bot.core.pause(SLACK_ALICE, "slack", "for the test")
        body = urlencode(command_form(SLACK_ALICE, "/cc", "resume", h.channel.channel_id, h.fake.response_url()))
        headers = sign(body)
        first, _ = await h.post(body, "application/x-www-form-urlencoded", headers)
        await h.fake.wait_for(lambda: not h.bot.approvals.is_paused())
        await h.bot.core.pause(SLACK_ALICE, "slack", "again")
        replay, text = await h.post(body, "application/x-www-form-urlencoded", headers)  # within the 5 minutes
        await h.channel.idle()
        assert (first, replay) == (200, 401) and "replayed" in text
        assert h.bot.approvals.is_paused()  # the replay resumed nothing
        assert any("replayed" in (e["reason"] or "") for e in h.store.list_events(kind="unauthorized"))
