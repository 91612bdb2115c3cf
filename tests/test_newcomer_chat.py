"""The running bot keeps people informed: status after a fill, a pause from another process
announced, out-of-range ids as one line, small talk only in the terminal, no markup there."""

from __future__ import annotations

import io

import pytest

from chatops.adapters.console import ConsoleChannel
from chatops.adapters.slack import SlackChannel
from chatops.adapters.telegram import TelegramChannel
from chatops.approvals import ApprovalService
from chatops.render import plain
from chatops.store import Store
from tests.spine_helpers import make_bot, settle_orders


@pytest.fixture
async def bot_out(tmp_path):
    out = io.StringIO()
    bot = make_bot(tmp_path, out=out)
    await bot.start()
    yield bot, out
    await bot.stop()


async def test_status_right_after_a_fill_shows_the_account_read_after_it(bot_out):
    bot, _ = bot_out
    await bot.tick()
    (p,) = bot.store.pending_proposals()
    before = (await bot.core.status("alice", "console")).text
    assert "position" not in before
    await bot.core.approve(p.id, "alice", "console")
    await settle_orders(bot)  # the sell starts at the mid and steps to the bid on the simulated clock
    after = (await bot.core.status("alice", "console")).text
    assert "after the last execution:" in after and f"position {p.symbol} size -0.1" in after


async def test_a_pause_from_another_process_is_announced_on_every_channel(bot_out, tmp_path):
    bot, out = bot_out
    other = Store(bot.settings.database_path)  # as `chatops pause` in another shell
    try:
        svc = ApprovalService(other, bot.settings)
        assert svc.set_paused(True, "bob", "console", "lunch").ok
        await bot.sweep()
        assert "[pause] Paused by console:bob (console): lunch." in out.getvalue() or \
            "[pause] Paused by bob (console): lunch." in out.getvalue(), out.getvalue()
        await bot.sweep()
        assert out.getvalue().count("[pause] Paused") == 1  # said once
        assert svc.set_paused(False, "alice", "console").ok
        await bot.sweep()
        assert "[pause] Resumed by" in out.getvalue()
    finally:
        other.close()


async def test_out_of_range_and_bad_ids_are_one_line(bot_out):
    bot, _ = bot_out
    for line, needle in (("approve 99999999999999999999", "is not a proposal number"),
                         ("/approve 99999999999999999999", "is not a proposal number"),
                         ("reject 1e9", "is not a proposal number"),
                         ("history abc", "is not a number of decisions"),
                         ("history 99999999999999999999", "is not a number of decisions"),
                         ("why 99999999999999999999", "neither a proposal id"),
                         ("why 42", "There is no proposal #42: nothing has been decided yet.")):
        reply = await bot.core.handle_text(line, "alice", "console")
        assert not reply.ok and needle in reply.text and "\n" not in reply.text, (line, reply.text)


async def test_help_lists_quit_in_the_terminal_only(bot_out):
    bot, _ = bot_out
    assert "quit" in (await bot.core.handle_text("help", "alice", "console")).text
    # The chats have no `quit` and show no tick small talk.
    assert not hasattr(TelegramChannel, "quiet") and not hasattr(SlackChannel, "quiet")


async def test_the_terminal_shows_no_markup_and_quit_stops(tmp_path):
    out = io.StringIO()
    stopped = []
    ch = ConsoleChannel(stdout=out, user="alice", read_input=False, on_quit=lambda: stopped.append(1))
    from chatops.adapters.base import Notice, Reply

    await ch.notify(Notice("pause", "Started PAUSED: `resume` to let it trade, *now*."))
    ch.show_reply(Reply("Ask me something, e.g. `ask why the 97k strike?`"))
    assert "`" not in out.getvalue() and "*" not in out.getvalue()
    assert "resume to let it trade, now." in out.getvalue()
    assert plain("a_b and _c_ and `x`") == "a_b and c and x"
