"""The built-in exchange simulator: a pure market model and a websocket feed server."""

from monitor.simulate.market import Market, SymbolSpec

__all__ = ["Market", "SymbolSpec"]
