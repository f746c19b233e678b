"""perpwatch: an early-warning daemon for perpetual-futures exchanges."""

__version__ = "0.1.0"
