"""Real Binance USD-M traffic with planted, labelled events of known size (ground truth).

A recording from hftbacktest's collector (``<local ns> <raw JSON>`` per line, gzip or xz;
the REST depth snapshot inline where it was fetched) is read into messages; ``plant_pull``
edits its depth diffs so that a bid of ``x_depth`` times the depth resting near the touch
appears ``below_bps`` under the best bid and is pulled ``hold_ms`` later: the planted size
is added to that price in every diff from the placement on (and added to the first one if
it does not mention the price), and the pull is one diff setting the level back to what the
venue really had there. Only level lists change: ``U``/``u``/``pu`` stay as recorded, so the
book stays in sync and reliable. ``replay`` runs the messages through the Binance codec (the
REST snapshot fed as the daemon feeds it) and the pure pipeline.

The recorder subscribed to ``@trade`` where the daemon subscribes to ``@aggTrade`` (same
prints, aggregated per taker order); ``read_hftbacktest`` renames the event type so the
codec reads them, as it would read the daemon's own stream.

>>> msgs = read_hftbacktest(EXCERPT)
>>> msgs[0]["data"]["e"], sum("rest_snapshot" in m for m in msgs)
('depthUpdate', 1)
"""

from __future__ import annotations

import gzip
import json
import lzma
import math
from dataclasses import dataclass
from pathlib import Path

from detectors.cancel_burst import CancelBurst
from monitor.codecs.binance_usdm import BinanceUsdmCodec
from monitor.pipeline import Pipeline
from monitor.state import MarketState

HERE = Path(__file__).resolve().parent
EXCERPT = HERE / "data" / "binance_usdm_ethusdt_excerpt.hftbacktest.xz"
FULL = HERE.parents[1] / "shared" / "data" / "real" / "binance_usdm_ethusdt_20240808.hftbacktest.gz"
SYMBOL = "ETHUSDT"


def read_hftbacktest(path: Path) -> list[dict]:
    """The recording's messages in order: combined-stream frames as dicts (``@trade`` renamed
    ``aggTrade``, ``bookTicker`` left out: no codec reads it), the REST snapshot as
    ``{"rest_snapshot": body}``."""
    opener = lzma.open if path.suffix == ".xz" else gzip.open
    out: list[dict] = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            _, sep, body = line.rstrip("\n").partition(" ")
            if not sep or '"bookTicker"' in body:
                continue
            d = json.loads(body)
            if "lastUpdateId" in d:
                out.append({"rest_snapshot": d})
                continue
            if d["data"].get("e") == "trade":
                d["data"]["e"] = "aggTrade"
            out.append(d)
    return out


def event_ms(m: dict) -> int:
    return m["rest_snapshot"]["E"] if "rest_snapshot" in m else m["data"]["E"]


@dataclass(frozen=True)
class Plant:
    """What was planted: where, how much, and against what depth."""

    place_ts: int  # event time of the diff that shows it
    pull_ts: int  # event time of the diff that takes it away
    price: float
    size: float  # base units added at ``price``
    notional: float
    depth_near: float  # notional resting on the bids within near_bps of the best bid when placed
    x_depth: float  # notional / depth_near
    trades_through: int  # sells printed at or under ``price`` while it rested (0: nothing reached it)


def _decimals(s: str) -> int:
    return len(s.partition(".")[2])


def book_at(msgs: list[dict], ts: int, symbol: str = SYMBOL):
    """The codec's book of ``symbol`` after every message before event time ``ts``."""
    codec, state = BinanceUsdmCodec(), MarketState()
    for m in msgs:
        if event_ms(m) >= ts:
            break
        for ev in _decode(codec, m, symbol):
            state.apply(ev)
    return state.books[symbol]


def plant_pull(msgs: list[dict], place_ts: int, x_depth: float, hold_ms: int = 1_000, below_bps: float = 3.0,
               near_bps: float = 10.0, symbol: str = SYMBOL) -> tuple[list[dict], Plant]:
    """A copy of ``msgs`` with a bid of ``x_depth`` x the near-touch bid depth placed at the
    first diff at or after ``place_ts``, ``below_bps`` under the best bid, and pulled at the
    first diff ``hold_ms`` later."""
    book = book_at(msgs, place_ts, symbol)
    bb = book.best_bid()
    diffs = [m for m in msgs if "data" in m and m["data"].get("e") == "depthUpdate" and m["data"]["b"]]
    pd = max(_decimals(p) for m in diffs[:50] for p, _ in m["data"]["b"])
    qd = max(_decimals(q) for m in diffs[:50] for _, q in m["data"]["b"])
    tick = 10.0 ** -pd
    price = round(math.floor(bb * (1 - below_bps / 1e4) / tick) * tick, pd)
    depth = book.depth_notional("bid", bb * (1 - near_bps / 1e4), bb)
    size = round(x_depth * depth / price, qd)
    real = book.bids.get(price, 0.0)
    out: list[dict] = []
    placed = pulled = None
    trades = 0
    for m in msgs:
        d = m.get("data")
        if d is None or d.get("s") != symbol or d["E"] < place_ts or pulled is not None:
            out.append(m)
            continue
        if d["e"] == "aggTrade":
            trades += float(d["p"]) <= price and d["m"]  # buyer is maker: a sell hit the bids
            out.append(m)
            continue
        if d["e"] != "depthUpdate":
            out.append(m)
            continue
        levels = [list(lv) for lv in d["b"]]
        mine = [lv for lv in levels if float(lv[0]) == price]
        if mine:
            real = float(mine[0][1])
        if placed is None or d["E"] < placed + hold_ms:
            placed = placed if placed is not None else d["E"]
            if mine:
                mine[0][1] = f"{real + size:.{qd}f}"
            else:
                levels.append([f"{price:.{pd}f}", f"{real + size:.{qd}f}"])
        else:
            pulled = d["E"]
            if not mine:
                levels.append([f"{price:.{pd}f}", f"{real:.{qd}f}"])
        out.append({**m, "data": {**d, "b": levels}})
    if placed is None or pulled is None:
        raise ValueError("the recording ends before the pull")
    return out, Plant(placed, pulled, price, size, round(size * price, 2), round(depth, 2),
                      round(size * price / depth, 3), int(trades))


def _decode(codec: BinanceUsdmCodec, m: dict, symbol: str) -> list:
    if "rest_snapshot" in m:
        return codec.on_rest_snapshot(symbol, json.dumps(m["rest_snapshot"]))
    return codec.decode(json.dumps(m, separators=(",", ":")))


def replay(msgs: list[dict], detectors: list | None = None, symbol: str = SYMBOL) -> tuple[list, Pipeline]:
    """Every message through the codec and the pure pipeline (cancel_burst on its defaults
    unless ``detectors`` are given); the anomalies and the pipeline."""
    codec = BinanceUsdmCodec()
    pipe = Pipeline(MarketState(), detectors if detectors is not None else [CancelBurst()], tick_ms=250)
    out = []
    for m in msgs:
        out += pipe.process(_decode(codec, m, symbol))
    out += pipe.flush()
    assert not codec.stats.dropped, codec.stats.dropped
    return out, pipe
