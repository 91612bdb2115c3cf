"""The one error a market model raises for bad or missing data: its message is one line for the user."""


class MarketDataError(Exception):
    """Market data that cannot be read or fetched; the message says what to do."""
