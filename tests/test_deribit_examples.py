"""Every verbatim example in shared/deribit/examples parses into the client's typed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.deribit.errors import NotEnoughFunds, TooManyRequests, BadRequest, error_for
from agent.deribit.types import (
    AccountSummary, AuthResult, BookSummary, IndexPrice, Instrument, Order, OrderResult, Position, Ticker, UserTrades,
)

# shared/ lies beside the checkout, for developers and CI alike.
EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "deribit" / "examples"

# file -> (type, is the result a list)
PARSERS = {
    "public_auth.json": (AuthResult, False),
    "public_get_index_price.json": (IndexPrice, False),
    "public_get_instruments.json": (Instrument, True),
    "public_get_book_summary_by_currency.json": (BookSummary, True),
    "public_get_book_summary_by_currency_option_ccxt.json": (BookSummary, True),
    "public_ticker.json": (Ticker, False),
    "private_get_account_summary.json": (AccountSummary, False),
    "private_get_positions.json": (Position, True),
    "private_get_position.json": (Position, False),
    "private_buy.json": (OrderResult, False),
    "private_sell.json": (OrderResult, False),
    "private_cancel.json": (Order, False),
    "private_get_order_state.json": (Order, False),
    "private_get_order_state_by_label.json": (Order, True),
    "private_get_open_orders_by_label.json": (Order, True),
    "private_get_user_trades_by_instrument.json": (UserTrades, False),
}


def load(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text())


def test_examples_folder_is_there():
    assert EXAMPLES.is_dir(), f"shared/deribit/examples not found at {EXAMPLES}"
    assert len(list(EXAMPLES.glob("*.json"))) >= 20


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_example_parses(name):
    model, is_list = PARSERS[name]
    result = load(name)["result"]
    parsed = [model.model_validate(x) for x in result] if is_list else model.model_validate(result)
    assert parsed


def test_every_example_file_is_covered():
    """A new example file must get a parser (or be an envelope/other-method example listed here)."""
    others = {"error_too_many_requests_nautilus.json", "jsonrpc_envelope_error_bad_request.json",
              "jsonrpc_envelope_success.json", "jsonrpc_request_example.json", "private_cancel_by_label.json",
              "private_get_margins.json", "private_get_settlement_history_by_currency.json",
              "public_get_order_book.json", "public_get_time.json"}
    names = {p.name for p in EXAMPLES.glob("*.json")}
    assert names - set(PARSERS) - others == set()


def test_specific_values_survive_parsing():
    book = BookSummary.model_validate(load("public_get_book_summary_by_currency_option_ccxt.json")["result"][0])
    assert book.instrument_name == "BTC-28JUN24-42000-C" and book.underlying_price == 68827.27 and book.bid_price == 0.404
    nulls = BookSummary.model_validate(load("public_get_book_summary_by_currency.json")["result"][0])
    assert nulls.bid_price is None and nulls.ask_price is None and nulls.mid_price is None
    cancel = Order.model_validate(load("private_cancel.json")["result"])
    assert cancel.price == "market_price" and cancel.order_state == "untriggered"
    pos = Position.model_validate(load("private_get_positions.json")["result"][0])
    assert pos.signed_size == 50
    acct = AccountSummary.model_validate(load("private_get_account_summary.json")["result"])
    assert acct.options_delta == -1.01962 and acct.equity == 302.61869214
    auth = AuthResult.model_validate(load("public_auth.json")["result"])
    assert auth.expires_in == 31536000


def test_numbers_as_strings_and_unknown_fields_are_tolerated():
    o = Order.model_validate({"order_id": 12, "instrument_name": "BTC-X", "direction": "sell", "amount": "0.1",
                              "filled_amount": "0", "price": "0.0125", "order_state": "open", "brand_new_field": [1]})
    assert o.order_id == "12" and o.amount == 0.1 and o.price == 0.0125


def test_error_envelopes_map_to_named_errors():
    e = load("error_too_many_requests_nautilus.json")["error"]
    assert isinstance(error_for(e["code"], e["message"], e.get("data")), TooManyRequests)
    e = load("jsonrpc_envelope_error_bad_request.json")["error"]
    err = error_for(e["code"], e["message"])
    assert isinstance(err, BadRequest) and not err.retryable and err.code == 11050
    assert isinstance(error_for(10009), NotEnoughFunds)
