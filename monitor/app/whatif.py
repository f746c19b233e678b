"""``perpwatch whatif``: the what-if engine (``monitor/state/whatif.py``) on the running
daemon's state (its latest checkpoint) or on a recording replayed to a point in event time."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from monitor.config import Config
from monitor.state.liquidation import DEFAULT_TIERS, parse_tiers
from monitor.state.whatif import LADDER, Snapshot, critical_shock, run


class WhatIfError(ValueError):
    """A user mistake: the message says which and how to fix it."""


def parse_shock(text: str) -> float:
    """``-2%``, ``-2 %``, ``-0.02`` -> -0.02 (within +-50%).

    >>> parse_shock("-2%"), parse_shock("0.5%"), parse_shock("-0.02")
    (-0.02, 0.005, -0.02)
    """
    t = text.strip().replace(" ", "")
    try:
        x = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise WhatIfError(f"--shock: {text!r} is not a move like -2% or -0.02") from None
    if not -0.5 <= x <= 0.5 or x == 0:
        raise WhatIfError(f"--shock: {text!r} must be a non-zero move within +-50%")
    return x


def parse_at(text: str | None) -> int | None:
    """Event time: epoch milliseconds or ISO 8601 (UTC unless it says otherwise)."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise WhatIfError(f"--at: {text!r} is neither epoch milliseconds nor ISO 8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def margin_terms(cfg: Config) -> dict:
    """Tiers and fee as the thin_book_cluster section sets them (one source of truth)."""
    section = dict(cfg.detectors.get("thin_book_cluster") or {})
    tiers = {s: parse_tiers(rows) for s, rows in (section.get("tiers") or {}).items()}
    default = parse_tiers(section["default_tiers"]) if section.get("default_tiers") else DEFAULT_TIERS
    return {"tiers": tiers, "default_tiers": default, "fee": float(section.get("taker_fee", 0.0005))}


def state_from_checkpoint(cfg: Config):
    from monitor.ops.checkpoint import load_checkpoint

    restored = load_checkpoint(cfg)
    if restored is None:
        raise WhatIfError("no usable checkpoint for this config (the daemon writes one every checkpoint_interval "
                          "and at stop); or pass --recording")
    return restored.pipeline.state, restored.pipeline.clock.now


def state_from_recording(cfg: Config, recording: Path, at_ms: int | None, fmt: str):
    from monitor.codecs.formats import codec_for
    from monitor.pipeline import build_pipeline
    from monitor.sources import read_recording

    if not recording.exists():
        raise WhatIfError(f"--recording: no such file: {recording}")
    pipeline, codec = build_pipeline(cfg), codec_for(fmt)
    for frame in read_recording(recording):
        pipeline.feed(codec.decode(frame))
        if at_ms is not None and pipeline.clock.now >= at_ms:
            break
    return pipeline.state, pipeline.clock.now


def report(state, now_ms: int, symbol: str, shock: float, terms: dict, ladder: bool = True) -> dict:
    snap = Snapshot.of(state, **terms)
    if symbol not in snap.marks:
        have = ", ".join(sorted(snap.marks)[:20]) or "none"
        raise WhatIfError(f"--symbol: {symbol!r} has no mark and reliable book in this state (have: {have})")
    path = run(snap, symbol, shock)
    out = {"symbol": symbol, "shock": shock, "event_time_ms": now_ms,
           "event_time": datetime.fromtimestamp(now_ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")
           if now_ms else None,
           "text": path.text(), "liquidated_notional": round(path.liquidated_notional, 2), "accounts": path.accounts,
           "depth_consumed": round(path.depth_consumed, 2), "moves": {s: round(m, 6) for s, m in path.moves.items()},
           "exhausted": path.exhausted, "sustains": path.sustains(), "already_liquidatable": path.already_liquidatable,
           "rounds": [[r._asdict() for r in rnd] for rnd in path.rounds],
           "positions": len(snap.positions), "symbols": len(snap.marks)}
    if ladder:
        crit = critical_shock(snap, symbol)
        out["ladder"] = list(LADDER)
        out["critical_shock"] = crit[0] if crit else None
        out["critical_path"] = crit[1].text() if crit else None
    return out
