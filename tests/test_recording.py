"""read_recording caps line length (issue 11 row 16: a 1 MB gzip expanding to one 1 GiB line
took 2.26 GB RSS on replay). An over-long line is skipped without being read whole, counted,
logged once, and the lines after it still come through."""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

from structlog.testing import capture_logs

from monitor.sources import MAX_LINE_BYTES, read_recording

MB = 1 << 20


def write_gzip(path: Path, parts: list[bytes | tuple[bytes, int]]) -> Path:
    """``(chunk, n)`` writes ``chunk`` n times: a huge line without a huge buffer."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        for p in parts:
            if isinstance(p, tuple):
                chunk, n = p
                for _ in range(n):
                    f.write(chunk)
            else:
                f.write(p)
    return path


def test_a_64mb_line_is_skipped_in_a_gzip_and_the_rest_comes_through(tmp_path):
    path = write_gzip(tmp_path / "rec.jsonl.gz", [
        b'{"type":"heartbeat","ts":1}\n',
        b'{"type":"book","symbol":"',
        (b"A" * MB, 64),  # one 64 MiB line
        b'"}\n',
        b'{"type":"heartbeat","ts":2}\n',
        b"x" * MB + b"\n",  # exactly the cap: kept
        b"y" * (MB + 1) + b"\n",  # one byte over: skipped
        b'{"type":"heartbeat","ts":3}\n',
        b"z" * (MB + 10),  # over the cap at end of file, no newline
    ])
    rec = read_recording(path, max_line_bytes=MB)
    tracemalloc.start()
    try:
        with capture_logs() as logs:
            lines = list(rec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == [b'{"type":"heartbeat","ts":1}', b'{"type":"heartbeat","ts":2}', b"x" * MB,
                     b'{"type":"heartbeat","ts":3}']
    assert rec.skipped_lines == 3 and rec.lines == 7
    # Logged once, with where and how big; the later ones are only counted.
    (line,) = [e for e in logs if e["event"] == "recording_line_too_long"]
    assert line["line"] == 2 and line["bytes"] == 64 * MB + len(b'{"type":"book","symbol":"') + 3
    # Never more than a few cap-sized buffers at once (the 64 MiB line is never held whole).
    assert peak < 8 * MB, peak


def test_plain_text_recording_with_a_long_line(tmp_path):
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"a\n" + b"b" * 5000 + b"\n\n  \nc\r\n")
    rec = read_recording(path, max_line_bytes=1000)
    assert list(rec) == [b"a", b"c"]
    assert rec.skipped_lines == 1


def test_default_cap():
    assert MAX_LINE_BYTES == 16 * MB
