"""Replay reads the recordings users already have (issue 16, part 2): hftbacktest captures
with the REST body inline, cryptofeed .ws files with their .http siblings, each synced by
Binance's rule (the snapshot's lastUpdateId bridged by a diff's [U, u], then the pu chain).

The real files live in ../shared/data/real (see ../shared/data/README.md); tests on them
are skipped when that folder is absent.
"""

import json
from pathlib import Path

import pytest

from monitor.codecs.formats import codec_for
from monitor.pipeline import build_pipeline
from monitor.sources import RecordedItems
from tests.support import TIMEOUT, perpwatch

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
HFT = REAL / "binance_usdm_ethusdt_20240808.hftbacktest.gz"
CRYPTOFEED = REAL / "BINANCE_FUTURES.ws.1.0"


def replay_json(tmp_path, path: Path, *extra: str) -> dict:
    cfg = tmp_path / "r.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path / "r.db"}"\n[metrics]\nenabled = false\n')
    r = perpwatch("replay", str(path), "--config", str(cfg), "--json", *extra, timeout=TIMEOUT * 6)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.skipif(not HFT.exists(), reason=f"absent: {HFT}")
def test_hftbacktest_capture_syncs_its_book_from_the_inline_snapshot(tmp_path):
    """The 6-minute hftbacktest ETHUSDT capture: the book syncs from its inline REST body, no alert."""
    s = replay_json(tmp_path, HFT, "--format", "binance-usdm")
    assert s["container"] == "hftbacktest"
    assert s["books_synced"] == ["ETHUSDT"] and s["books_unsynced"] == []
    assert "depth_buffer_overflow" not in s["dropped"] and "snapshot_unmatched" not in s["dropped"]
    assert s["events"] > 6_000 + 14_076  # every depth diff after the snapshot, every @trade print
    assert s["unknown"] == {}  # @trade and bookTicker decoded
    assert s["anomalies"] == {}, s["anomalies"]  # bookTicker agreed with the book at every shared update id


def cryptofeed_pair(tmp_path) -> Path:
    """The real cryptofeed .ws file beside an .http file in cryptofeed's own format holding a
    depth snapshot per symbol, fetched (as cryptofeed would) just after its first diff."""
    ws = tmp_path / "BINANCE_FUTURES.ws.1.0"
    ws.write_bytes(CRYPTOFEED.read_bytes())
    lines, seen = [], set()
    for line in CRYPTOFEED.read_text().splitlines()[1:]:
        head, sep, body = line.partition(": ")
        if not sep or " " in head:
            continue
        d = json.loads(body)["data"]
        if d.get("e") == "depthUpdate" and d["s"] not in seen:
            seen.add(d["s"])
            snap = {"lastUpdateId": d["u"], "E": d["E"], "T": d["T"], "bids": [["0.0001", "1"]],
                    "asks": [["99999", "1"]]}
            lines.append(f"https://fapi.binance.com/fapi/v1/depth?symbol={d['s']}&limit=1000 -> "
                         f"{float(head) + 0.05:.6f}: {json.dumps(snap)}")
    (tmp_path / "BINANCE_FUTURES.http.0.0").write_text("\n".join(lines) + "\n")
    return ws


@pytest.mark.skipif(not CRYPTOFEED.exists(), reason=f"absent: {CRYPTOFEED}")
def test_cryptofeed_ws_file_is_merged_with_its_http_snapshots(tmp_path):
    """A cryptofeed .ws file with .http snapshots beside it: every book synced, in receive order."""
    ws = cryptofeed_pair(tmp_path)
    rec = RecordedItems(ws)
    assert rec.container == "cryptofeed" and [p.name for p in rec.http] == ["BINANCE_FUTURES.http.0.0"]
    items = list(rec)
    assert [i[2] for i in items] == sorted(i[2] for i in items)
    codec, pipeline = codec_for("binance-usdm"), build_pipeline()
    found = pipeline.run_items(items, lambda _: codec)
    books = pipeline.state.books
    assert sorted(books) == ["AKROUSDT", "CTKUSDT", "KEEPUSDT", "SUSHIUSDT"]
    assert all(b.reliable and b.gaps == 0 for b in books.values())
    assert codec.needs_snapshot() == set() and [a.kind for a in found] == []


@pytest.mark.skipif(not CRYPTOFEED.exists(), reason=f"absent: {CRYPTOFEED}")
def test_cryptofeed_ws_file_alone_says_its_books_never_synced(tmp_path):
    """Without .http snapshots the books cannot sync, and the replay summary says so."""
    s = replay_json(tmp_path, CRYPTOFEED, "--format", "binance-usdm")
    assert s["container"] == "cryptofeed" and s["books_synced"] == []
    assert s["books_unsynced"] == ["AKROUSDT", "CTKUSDT", "KEEPUSDT", "SUSHIUSDT"]
