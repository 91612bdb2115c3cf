"""The Slack channel end to end: proposal cards and their buttons (approve, reject through the
modal, why), forged and stale signatures, Socket Mode, configuration and rendering. Slash commands,
questions, notices and delivery: tests/test_slack_commands.py. The harness: tests/slack_helpers.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlencode

import pytest

from agent.config import ConfigError, load_settings
from chatops.adapters.slack import (
    ACTION_APPROVE,
    ACTION_REJECT,
    ACTION_WHY,
    REJECT_VIEW,
    ChannelPacer,
    SlackChannel,
    card_blocks,
    esc,
    fallback_text,
    text_blocks,
)
from chatops.render import Card
from tests.spine_helpers import until_executed
from tests.fakes.slack_server import BOT_USER_ID, fake_slack_server
from tests.slack_helpers import (
    CHANNEL_ID, ALICE, BOB, STRANGER, SECRET, FAST, free_port, sign, block_actions, view_submission,
    command_form, running, buttons, block_types)


# --- proposals and buttons ------------------------------------------------------------------------


async def test_proposal_blocks_and_approve_executes_and_updates_in_place(tmp_path):
    async with running(tmp_path) as h:
        assert h.channel.mode == "http" and h.channel.bot_user_id == BOT_USER_ID
        pid, card = await h.tick_card()
        assert card.channel == CHANNEL_ID
        assert block_types(card) == ["header", "section", "section", "section", "section", "context", "actions"]
        assert card.blocks[0]["text"]["text"] == f"[PAPER] #{pid} Open covered call"
        fields = "\n".join(f["text"] for f in card.blocks[1]["fields"])
        assert "*Instrument*\nBTC-" in fields and "*Size*" in fields
        context = " ".join(e["text"] for e in card.blocks[-2]["elements"])
        label = h.store.get_proposal(pid).label
        assert "[PAPER]" in context and "source: rule" in context and f"label {label}" in context
        assert buttons(card) == [("Approve", ACTION_APPROVE, str(pid)), ("Reject", ACTION_REJECT, str(pid)),
                                 ("Why", ACTION_WHY, str(pid))]
        approve, reject, _ = card.buttons
        assert approve["style"] == "primary" and reject["style"] == "danger"
        assert approve["confirm"]["confirm"]["text"] == "Approve" and "BTC-" in approve["confirm"]["text"]["text"]
        assert card.text.startswith(f"[PAPER] #{pid} Open covered call")  # the fallback text
        assert h.bot.core.message_refs(pid, "slack") == [(CHANNEL_ID, card.ts)]

        status, _ = await h.press(ALICE, ACTION_APPROVE, pid, card)
        assert status == 200
        await until_executed(h.bot, pid)
        assert len(h.paper_orders(label)) == 1
        # The same message (chat.update by channel + ts, no response_url) now shows the final state, no buttons.
        await h.fake.wait_for(lambda: "Executed" in card.visible and not card.buttons)
        assert "approved by U1 (slack)" in card.visible and "order BTC-" in card.visible
        updates = h.fake.calls_to("chat.update")
        assert updates and all(c.params["channel"] == CHANNEL_ID and c.params["ts"] == card.ts for c in updates)
        assert "actions" not in block_types(card)
        assert not h.fake.responses
        await h.fake.wait_for(lambda: h.fake.ephemerals_for(ALICE))
        assert "approved" in h.fake.ephemerals_for(ALICE)[0]["text"].lower()
        await h.fake.wait_for(lambda: any("[Fill]" in m.visible for m in h.fake.posted(CHANNEL_ID)))


async def test_stranger_is_refused_everywhere_and_recorded(tmp_path):
    async with running(tmp_path) as h:
        h.channel.strangers.seconds = 0  # tell every time (by default once per conversation per hour)
        pid, card = await h.tick_card()
        for action in (ACTION_APPROVE, ACTION_REJECT, ACTION_WHY):
            status, _ = await h.press(STRANGER, action, pid, card)
            assert status == 200
        await h.fake.wait_for(lambda: len(h.fake.ephemerals_for(STRANGER)) == 3)
        assert all(e["text"].startswith("Not authorized") for e in h.fake.ephemerals_for(STRANGER))
        url = await h.command(STRANGER, "/cc", f"approve {pid}")
        assert (await h.answer(url)).text.startswith("Not authorized")
        assert (await h.answer(url)).response_type == "ephemeral"
        await h.event({"type": "app_mention", "user": STRANGER, "text": f"<@{BOT_USER_ID}> balance?",
                       "ts": "1700000100.000100", "channel": CHANNEL_ID, "event_ts": "1700000100.000100"})
        await h.fake.wait_for(lambda: len(h.fake.ephemerals_for(STRANGER)) == 4)
        await h.channel.idle()
        assert h.status(pid) == "pending" and not h.store.votes(pid)
        assert not h.fake.views and not h.fake.calls_to("chat.update")
        assert buttons(card)  # untouched
        events = h.store.list_events(kind="unauthorized")
        assert len(events) == 5 and {e["actor"] for e in events} == {STRANGER}
        assert {e["channel"] for e in events} == {"slack"}


async def test_forged_signature_and_stale_timestamp_are_refused(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        body = urlencode({"payload": json.dumps(block_actions(ALICE, ACTION_APPROVE, pid, card))})
        ctype = "application/x-www-form-urlencoded"
        forged, _ = await h.post(body, ctype, sign(body, secret="not-the-secret"))
        stale, _ = await h.post(body, ctype, sign(body, timestamp=int(time.time()) - 6 * 60))
        unsigned, _ = await h.post(body, ctype, {})
        tampered, _ = await h.post(body.replace("U1", "U2"), ctype, sign(body))  # signature of another body
        assert {forged, stale, unsigned, tampered} <= {401, 403}
        await h.channel.idle()
        assert h.status(pid) == "pending" and not h.store.votes(pid)
        assert not h.fake.ephemerals and not h.fake.calls_to("chat.update")
        # Slack's URL check (HTTP mode set-up) is answered, when signed.
        status, text = await h.post(json.dumps({"type": "url_verification", "challenge": "abc", "token": "t"}),
                                    "application/json")
        assert status == 200 and "abc" in text


async def test_double_press_executes_once(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        results = await asyncio.gather(h.press(ALICE, ACTION_APPROVE, pid, card),
                                       h.press(BOB, ACTION_APPROVE, pid, card),
                                       h.press(ALICE, ACTION_APPROVE, pid, card))
        assert [s for s, _ in results] == [200, 200, 200]
        await until_executed(h.bot, pid)
        await h.fake.wait_for(lambda: len(h.fake.ephemerals) == 3)
        await h.bot.core.drain()
        assert len(h.paper_orders(h.store.get_proposal(pid).label)) == 1
        texts = [e["text"].lower() for e in h.fake.ephemerals]
        assert sum("approved" in t and "already" not in t for t in texts) == 1
        await h.fake.wait_for(lambda: "Executed" in card.visible and not card.buttons)


async def test_reject_with_reason_through_the_modal(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        status, _ = await h.press(BOB, ACTION_REJECT, pid, card, trigger_id="trig-42")
        assert status == 200
        opened = await h.fake.wait_for(lambda: h.fake.views)
        assert opened[0]["trigger_id"] == "trig-42"
        view = opened[0]["view"]
        assert view["callback_id"] == REJECT_VIEW and json.loads(view["private_metadata"])["proposal_id"] == pid
        assert h.status(pid) == "pending"  # nothing happens until the modal is submitted
        # A stranger cannot submit it either (a submission is checked on its own).
        status, _ = await h.interact(view_submission(STRANGER, view, "nope"))
        assert status == 200
        await h.fake.wait_for(lambda: h.fake.ephemerals_for(STRANGER))
        assert h.status(pid) == "pending"

        status, text = await h.interact(view_submission(BOB, view, "strike too close <to> spot & co"))
        assert status == 200 and text in ("", "{}")  # an empty ack closes the modal
        await h.fake.wait_for(lambda: h.status(pid) == "rejected")
        assert h.store.votes(pid)[0].reason == "strike too close <to> spot & co"
        await h.fake.wait_for(lambda: "Rejected" in card.visible and not card.buttons)
        assert "rejected by U2 (slack): strike too close <to> spot & co" in card.visible
        raw = "\n".join(b.get("text", {}).get("text", "") for b in card.blocks)
        assert "&lt;to&gt; spot &amp; co" in raw  # escaped in mrkdwn
        assert not h.paper_orders(h.store.get_proposal(pid).label)
        # Reject on a decided proposal: no modal, an ephemeral says so.
        await h.press(ALICE, ACTION_REJECT, pid, card)
        await h.fake.wait_for(lambda: any("already decided" in e["text"] for e in h.fake.ephemerals_for(ALICE)))
        assert len(h.fake.views) == 1


async def test_why_button_is_answered_ephemerally(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        await h.press(ALICE, ACTION_WHY, pid, card)
        answer = (await h.fake.wait_for(lambda: h.fake.ephemerals_for(ALICE)))[0]
        assert answer["channel"] == CHANNEL_ID and f"#{pid}" in answer["visible"]
        assert h.status(pid) == "pending"


# --- Socket Mode ----------------------------------------------------------------------------------


async def test_socket_mode_approve_and_command(tmp_path):
    async with running(tmp_path, socket_mode=True) as h:
        assert h.channel.mode == "socket" and h.channel.http_port is None
        await h.fake.wait_for(lambda: h.fake.sockets and h.channel.socket_connected)
        pid, card = await h.tick_card()
        eid = await h.fake.push_envelope("interactive", block_actions(STRANGER, ACTION_APPROVE, pid, card))
        await h.fake.wait_for(lambda: h.fake.acks.get(eid))
        await h.fake.wait_for(lambda: h.fake.ephemerals_for(STRANGER))
        assert h.status(pid) == "pending"
        eid = await h.fake.push_envelope("interactive", block_actions(ALICE, ACTION_APPROVE, pid, card))
        await h.fake.wait_for(lambda: h.fake.acks.get(eid))
        await until_executed(h.bot, pid)
        await h.fake.wait_for(lambda: "Executed" in card.visible and not card.buttons)
        url = h.fake.response_url()
        eid = await h.fake.push_envelope("slash_commands", command_form(BOB, "/cc", "status", CHANNEL_ID, url),
                                         accepts_response_payload=True)
        await h.fake.wait_for(lambda: h.fake.acks.get(eid))
        assert "Pending proposals: none" in (await h.answer(url)).visible
        # Slack refreshes Socket Mode connections now and then: the client reconnects and goes on.
        await h.fake.push_message({"type": "disconnect", "reason": "refresh_requested"})
        await h.fake.wait_for(lambda: h.fake.socket_connections == 2 and h.fake.sockets)
        url = h.fake.response_url()
        eid = await h.fake.push_envelope("slash_commands", command_form(ALICE, "/cc", "why", CHANNEL_ID, url))
        await h.fake.wait_for(lambda: h.fake.acks.get(eid))
        assert f"#{pid}" in (await h.answer(url)).visible


# --- configuration and rendering ---------------------------------------------------------------------


def test_mode_and_token_checks(tmp_path):
    base = dict(env_file=None, database_path=str(tmp_path / "db"), slack_bot_token="xoxb-x", slack_channel_id="C1")
    with pytest.raises(ConfigError, match="SLACK_APP_TOKEN .* or SLACK_SIGNING_SECRET"):
        SlackChannel(load_settings(**base))
    with pytest.raises(ConfigError, match="xapp-"):
        SlackChannel(load_settings(**base, slack_app_token="xoxb-wrong"))
    ch = SlackChannel(load_settings(**base, slack_app_token="xapp-1", slack_signing_secret="s"))
    assert ch.mode == "socket"
    ch = SlackChannel(load_settings(**base, slack_signing_secret="s", slack_api_base_url="http://127.0.0.1:1/api"))
    assert ch.mode == "http" and ch.client.base_url == "http://127.0.0.1:1/api/"
    assert any(type(r).__name__ == "AsyncRateLimitErrorRetryHandler" for r in ch.client.retry_handlers)


async def test_bad_bot_token_stops_start(tmp_path):
    async with fake_slack_server(bot_token="xoxb-other") as fake:
        settings = load_settings(env_file=None, database_path=str(tmp_path / "db"), slack_bot_token="xoxb-test",
                                 slack_signing_secret=SECRET, slack_channel_id=CHANNEL_ID, slack_allowed_user_ids=ALICE,
                                 slack_api_base_url=fake.base_url, slack_http_port=free_port())
        with pytest.raises(ConfigError, match="SLACK_BOT_TOKEN was rejected"):
            await SlackChannel(settings, options=FAST).start(core=None)  # type: ignore[arg-type]


def test_card_rendering_escapes_and_clips():
    card = Card(title="#7 Open covered call", tag="[LIVE]", fields=(("Instrument", "BTC-<x>&y"), ("Source", "llm")),
                sections=(("Reasoning", "a < b & c > d\n" + "x" * 5000),), footer="label cc-7", proposal_id=7,
                status="pending", actionable=True)
    blocks = card_blocks(card)
    assert blocks[1]["fields"][0]["text"] == "*Instrument*\nBTC-&lt;x&gt;&amp;y"
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if b["type"] == "section" and "text" in b)
    assert blocks[2]["text"]["text"].startswith("*Reasoning*\na &lt; b &amp; c &gt; d")
    assert [e["text"] for e in blocks[-2]["elements"]] == ["*[LIVE]*", "source: llm", "label cc-7"]
    assert [b["value"] for b in blocks[-1]["elements"]] == ["7", "7", "7"]
    assert "actions" not in [b["type"] for b in card_blocks(Card(**{**card.__dict__, "actionable": False}))]
    text = fallback_text(card)
    assert len(text) <= 3000 and text.endswith("…") and "&lt;x&gt;" in text
    assert esc("<@U1> & <!channel>") == "&lt;@U1&gt; &amp; &lt;!channel&gt;"  # no pings smuggled in
    long = text_blocks("line\n" * 2000, pre=True)
    assert len(long) > 1 and all(b["text"]["text"].startswith("```") for b in long)


async def test_channel_pacer_spaces_messages():
    now = [0.0]
    slept: list[float] = []

    async def sleep(d: float) -> None:
        slept.append(d)
        now[0] += d

    pacer = ChannelPacer(1.0, clock=lambda: now[0], sleep=sleep)
    await pacer.acquire("C1")
    await pacer.acquire("C2")  # another channel: no wait
    await pacer.acquire("C1")
    assert slept == [1.0]


def test_manifest_matches_the_commands_we_register():
    import re
    from pathlib import Path

    from chatops.adapters.slack import COMMANDS

    text = (Path(__file__).resolve().parent.parent / "slack-manifest.yaml").read_text()
    from agent.config import Settings

    listed = re.findall(r"- command: (/\S+)\n\s+description: \"([^\"]*)\"\n", text)
    # One namespaced command, the default SLACK_COMMAND; its description names every word it takes.
    assert [c for c, _ in listed] == [f"/{Settings.model_fields['slack_command'].default}"]
    assert all(name in listed[0][1] for name, _, _ in COMMANDS)
    assert re.search(r"socket_mode_enabled: true", text) and re.search(r"interactivity:\n\s+is_enabled: true", text)
    for needed in ("chat:write", "commands", "app_mentions:read", "im:history", "im:write", "- app_mention",
                   "- message.im"):
        assert needed in text
