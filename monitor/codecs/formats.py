"""The codec of each source ``format`` (``[[sources]] format`` in the config).

>>> type(codec_for("binance-usdm")).__name__, FORMATS
('BinanceUsdmCodec', ('perpwatch', 'binance-usdm', 'bybit-v5'))
"""

from __future__ import annotations

from typing import Callable, get_args

from monitor.codecs import Codec
from monitor.codecs.binance_usdm import BinanceUsdmCodec
from monitor.codecs.bybit_v5 import BybitV5Codec
from monitor.codecs.native import NativeCodec
from monitor.config import Format

FORMATS: tuple[str, ...] = get_args(Format)
_CODECS: dict[str, Callable[[], Codec]] = {"perpwatch": NativeCodec, "binance-usdm": BinanceUsdmCodec,
                                           "bybit-v5": BybitV5Codec}
assert set(_CODECS) == set(FORMATS)


def codec_for(fmt: str) -> Codec:
    """A fresh codec for a source format (ValueError naming the known ones otherwise)."""
    make = _CODECS.get(fmt)
    if make is None:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    return make()
