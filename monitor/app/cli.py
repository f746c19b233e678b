"""The ``perpwatch`` command line.

Every user mistake (bad config, bad flag value, missing store) is one clear line on
stderr and a non-zero exit (2 for configuration), never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from monitor import config as config_mod
from monitor.config import Config, ConfigError, Duration
from monitor.app.render import fmt_ts, safe, sev_cell, summarize_detail
from monitor.fmt import money
from monitor.store import Store, StoreError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="perpwatch: early warning for perpetual-futures exchanges.")
err = Console(stderr=True, soft_wrap=True)

def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]perpwatch:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line and an exit status."""
    try:
        yield
    except ConfigError as e:
        raise fail(f"config error: {e}", 2) from None
    except StoreError as e:
        raise fail(str(e), 1) from None


def load_config(path: Path) -> Config:
    from monitor.pipeline import load_config as load_checked

    with user_errors():
        return load_checked(path)


def parse_duration(flag: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return Duration.parse(text).seconds
    except ValueError as e:
        raise fail(f"{flag}: {e}", 2) from None


ConfigOpt = typer.Option(..., "--config", "-c", help="TOML config file.", exists=False, dir_okay=False)


@app.command("check-config")
def check_config(file: Path = typer.Argument(..., help="TOML config file.")) -> None:
    """Validate a config file without running (exit 2 names the bad key)."""
    cfg = load_config(file)
    from monitor.pipeline import build_pipeline
    from monitor.venues import make_session

    with user_errors():
        for s in cfg.sources:
            make_session(s)
        build_pipeline(cfg)
        for i, r in enumerate(cfg.alerts.receivers):
            config_mod.receiver_url(r, i)
            config_mod.resolve_secret(f"alerts.receivers[{i}].secret", r.secret_env, r.secret_file)
    print(f"ok: {file}: {len(cfg.sources)} source(s), {len(cfg.alerts.receivers)} receiver(s), "
          f"{len(cfg.alerts.routes)} route(s)")


@app.command()
def run(config: Path = ConfigOpt) -> None:
    """Run the daemon: connect to the sources, detect, store, alert. SIGTERM drains."""
    # Until the event loop takes SIGTERM over, nothing has been received: stopping is clean.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cfg = load_config(config)
    if not cfg.sources:
        raise fail("config error: sources: at least one [[sources]] entry is required to run", 2)
    from monitor import logs
    from monitor.daemon import Daemon

    logs.configure(cfg.logging.level, cfg.logging.format)
    with user_errors():
        daemon = Daemon(cfg)
    code = asyncio.run(daemon.run())
    raise typer.Exit(code)


@app.command()
def record(
    config: Path = ConfigOpt,
    out: Path = typer.Option(..., "--out", help="Directory for the recording (created if missing)."),
) -> None:
    """Run the daemon and record what it processes: every source's frames with their receive
    time, the REST snapshots it fetched and its stall ticks, so `perpwatch replay DIR` gives
    the same books and anomalies. SIGTERM drains, as for run."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cfg = load_config(config)
    if not cfg.sources:
        raise fail("config error: sources: at least one [[sources]] entry is required to run", 2)
    if out.exists() and not out.is_dir():
        raise fail(f"--out: {out} exists and is not a directory", 2)
    from monitor import logs
    from monitor.daemon import Daemon
    from monitor.daemon import recorder_for

    logs.configure(cfg.logging.level, cfg.logging.format)
    try:
        recorder = recorder_for(cfg, out)
    except OSError as e:
        raise fail(f"--out: cannot write a recording in {out}: {e.strerror or e}", 2) from None
    with user_errors():
        daemon = Daemon(cfg, recorder=recorder)
    err.print(f"recording to {recorder.path}", highlight=False)
    code = asyncio.run(daemon.run())
    raise typer.Exit(code)


@app.command()
def replay(
    file: Path = typer.Argument(..., help="A recording: a `perpwatch record` file or directory, an hftbacktest "
                                "capture, a cryptofeed .ws. file (its .http. siblings beside it), or one frame "
                                "per line (JSON); optionally gzipped."),
    config: Path = ConfigOpt,
    fmt: Optional[str] = typer.Option(None, "--format", help="Codec (default: the first source's format; a "
                                      "`perpwatch record` recording names each source's own)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Replay a recording through the same pipeline, as fast as the CPU allows."""
    cfg = load_config(config)
    from monitor.codecs.formats import FORMATS, codec_for
    from monitor.pipeline import build_pipeline, tune_gc
    from monitor.sources import RecordedItems

    if not file.exists():
        raise fail(f"no such recording: {file}", 2)
    fmt = fmt or (cfg.sources[0].format if cfg.sources else "perpwatch")
    if fmt not in FORMATS:
        raise fail(f"--format: unknown format {fmt!r} (known: {', '.join(FORMATS)})", 2)
    recording = RecordedItems(file)
    if not recording.files:
        raise fail(f"no recording in {file} (a directory holds perpwatch-*.rec.gz files)", 2)
    unknown = {n: f for n, f in recording.sources.items() if f not in FORMATS}
    if unknown:
        raise fail(f"{file}: recorded sources with formats this perpwatch does not know: {unknown}", 2)
    with user_errors():
        default = codec_for(fmt)
        codecs = {name: codec_for(f) for name, f in recording.sources.items()}
        pipeline = build_pipeline(cfg)
        base = cfg.sources[0] if cfg.sources else None
        for name, c in (codecs or {"": default}).items():
            w = recording.watch.get(name)
            if w is not None:  # watched as the recording daemon watched it
                pipeline.coverage.watch(name, c, w.symbols, tuple(w.streams), unsynced_after_ms=w.unsynced_after_ms,
                                        silent_after_ms=w.silent_after_ms)
            else:  # subscriptions unknown: the symbols and continuous streams the recording has
                pipeline.coverage.watch(name, c, (), None,
                                        unsynced_after_ms=base.unsynced_after.ms if base else 30_000,
                                        silent_after_ms=base.silent_after.ms if base else 60_000)
        store = Store(cfg.store.path)
        from alerts.incidents import IncidentTable

        incidents = IncidentTable(cfg.store.path)
    kinds: Counter[str] = Counter()

    def store_batch(batch: list) -> None:  # the daemon's order: anomalies, then the incidents they changed
        store.write_anomalies(batch)
        incidents.upsert(pipeline.take_incidents())
        kinds.update(a.kind for a in batch)

    tune_gc()
    t0 = time.perf_counter()
    pipeline.run_items(recording, lambda source: codecs.get(source, default), on_batch=store_batch)
    store.close()
    incidents.close()
    elapsed = time.perf_counter() - t0
    events = sum(pipeline.counts.values())
    used = list(codecs.values()) or [default]
    dropped: Counter[str] = Counter()
    unknown_kinds: Counter[str] = Counter()
    unsynced: list[str] = []
    for c in used:
        dropped.update(c.stats.dropped)
        unknown_kinds.update(c.stats.unknown)
        waiting = getattr(c, "needs_snapshot", None)
        if waiting is not None:
            unsynced += sorted(waiting())
    books = pipeline.state.books
    summary = {
        "container": recording.container,
        "frames": sum(c.stats.frames for c in used), "events": events,
        "events_per_s": round(events / elapsed) if elapsed > 0 else None,
        "elapsed_s": round(elapsed, 3), "anomalies": dict(kinds),
        "books_synced": sorted(s for s, b in books.items() if b.reliable),
        "books_unsynced": sorted(set(unsynced) | {s for s, b in books.items() if not b.reliable}),
        "dropped": dict(dropped), "unknown": dict(unknown_kinds),
        "skipped_lines": recording.skipped_lines, "unreadable_lines": recording.unreadable,
    }
    if as_json:
        print(msgspec.json.encode(summary).decode())
        return
    t = Table(title=f"replay of {safe(file.name)}", show_header=False)
    for k, v in summary.items():
        t.add_row(k, safe(v))
    Console().print(t)


@app.command()
def anomalies(
    config: Path = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array (CONTRACT section 4)."),
    since: Optional[str] = typer.Option(None, "--since", help="Only the last DURATION, e.g. 15m, 2h, 1d."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Only this kind, e.g. cancel_burst."),
    symbol: Optional[str] = typer.Option(None, "--symbol", help="Only this symbol."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1,
                                        help="At most this many, newest first (default: all with --json, 100 in the table)."),
) -> None:
    """List stored anomalies, newest first."""
    if limit is None and not as_json:
        limit = 100
    cfg = load_config(config)
    since_s = parse_duration("--since", since)
    path = Path(cfg.store.path)
    if not path.exists():
        rows: list[dict] = []
        if not as_json:
            err.print(f"no store yet at {path} (nothing detected, or the daemon has not run)")
    else:
        with user_errors():
            rows = Store.reader(path).anomalies(since_s=since_s, kind=kind, symbol=symbol, limit=limit)
    if as_json:
        print_json(rows)
        return
    print_anomaly_table(rows)


def _incident_table(path: Path):
    from alerts.incidents import IncidentTable

    if not path.exists():
        return None
    return IncidentTable(path, readonly=True)


@app.command()
def incidents(
    config: Path = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array."),
    limit: int = typer.Option(50, "--limit", min=1),
) -> None:
    """List incidents, most recently active first."""
    cfg = load_config(config)
    table = _incident_table(Path(cfg.store.path))
    rows = table.list(limit) if table is not None else []
    for r in rows:
        r.pop("timeline")
    if as_json:
        print_json(rows)
        return
    t = make_table(f"{len(rows)} incidents", ("id", "status", "severity", "opened (UTC)", "last (UTC)", "title"))
    for r in rows:
        sev = r["severity"]
        t.add_row(safe(r["id"]), safe(r["status"]), sev_cell(sev), fmt_ts(r["opened_ts"]),
                  fmt_ts(r["last_ts"]), safe(r["title"]))
    Console().print(t)


@app.command()
def incident(
    incident_id: str = typer.Argument(..., help="An incident id from `perpwatch incidents`."),
    config: Path = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the incident as JSON."),
) -> None:
    """One incident: its evidence and its timeline (which anomaly joined when and why)."""
    cfg = load_config(config)
    table = _incident_table(Path(cfg.store.path))
    row = table.get(incident_id) if table is not None else None
    if row is None:
        raise fail(f"no incident {incident_id!r} in {cfg.store.path}", 1)
    if as_json:
        print_json(row)
        return
    console = Console()
    sev = row["severity"]
    console.print(f"[bold]{safe(row['id'])}[/]  {sev_cell(sev)}  {safe(row['status'])}  {safe(row['title'])}")
    console.print(f"symbols: {safe(', '.join(row['symbols'])) or '-'}   "
                  f"accounts: {safe(', '.join(row['accounts'][:20])) or '-'}")
    t = make_table("timeline (event time)", ("time (UTC)", "kind", "severity", "symbol", "account", "why it joined"))
    for e in row["timeline"]:
        t.add_row(fmt_ts(e["ts"]), safe(e["kind"]), sev_cell(e["severity"]), safe(e["symbol"] or ""),
                  safe(e["account"] or ""), safe(e["reason"]))
    console.print(t)


@app.command()
def export(
    out: Path = typer.Argument(..., help="Output file."),
    config: Path = ConfigOpt,
    since: str = typer.Option("1d", "--since", help="Anomalies of the last DURATION."),
    fmt: str = typer.Option("parquet", "--format", help="parquet or csv."),
) -> None:
    """Export stored anomalies with polars (detail as a JSON column)."""
    import polars as pl

    if fmt not in ("parquet", "csv"):
        raise fail(f"--format: expected parquet or csv, got {fmt!r}", 2)
    cfg = load_config(config)
    since_s = parse_duration("--since", since)
    path = Path(cfg.store.path)
    with user_errors():
        rows = Store.reader(path).anomalies(since_s=since_s, limit=None) if path.exists() else []
    schema = {"id": pl.Utf8, "kind": pl.Utf8, "symbol": pl.Utf8, "account": pl.Utf8, "ts": pl.Int64,
              "score": pl.Float64, "severity": pl.Utf8, "detail": pl.Utf8}
    df = pl.DataFrame([{**r, "detail": msgspec.json.encode(r["detail"]).decode()} for r in rows], schema=schema)
    if fmt == "parquet":
        df.write_parquet(out)
    else:
        df.write_csv(out)
    print(f"{df.height} anomalies -> {out}")


@app.command()
def status(config: Path = ConfigOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """Sources, lag, open incidents and pending notifications, from the store and /metrics."""
    from rich.panel import Panel

    from alerts.incidents import IncidentTable
    from alerts.outbox import Outbox
    from monitor.ops.metrics import scrape

    cfg = load_config(config)
    path = Path(cfg.store.path)
    report: dict = {"store": str(path), "sources": {}, "metrics": None}
    if path.exists():
        with user_errors():
            store = Store.reader(path)
            report["anomalies_last_hour"] = store.detected_since(time.time() - 3600)
            report["latest_anomaly_ts"] = store.latest_ts()
            report["open_incidents"] = IncidentTable(path, readonly=True).firing()
            report["pending_notifications"] = Outbox(path, readonly=True).pending()
    if cfg.metrics.enabled:
        host, port = config_mod.listen_address(cfg)
        per_source = {"perpwatch_source_connected": "connected", "perpwatch_source_last_frame_seconds": "last_frame_wall",
                      "perpwatch_frames_total": "frames"}
        try:
            samples = scrape(host, port)
        except OSError as e:
            report["metrics"] = f"unreachable ({e.__class__.__name__}): is the daemon running?"
        else:
            report["metrics"] = "up"
            for name, labels, value in samples:
                if name in per_source and "source" in labels:
                    report["sources"].setdefault(labels["source"], {})[per_source[name]] = value
                elif name == "perpwatch_event_lag_seconds" and not labels:
                    report["event_lag_s"] = value
    if as_json:
        print_json(report)
        return
    t = Table.grid(padding=(0, 2))
    for k, v in report.items():
        if k != "sources":
            t.add_row(k, safe(v))
    for name, s in report["sources"].items():
        age = time.time() - s.get("last_frame_wall", 0) if s.get("last_frame_wall") else None
        t.add_row(f"source {safe(name)}", f"{'connected' if s.get('connected') else 'DOWN'}, {int(s.get('frames', 0))} "
                  f"frames, last {age:.1f} s ago" if age is not None else "no frame yet")
    Console().print(Panel(t, title="perpwatch status"))


alert_app = typer.Typer(help="Check the alert receivers.", no_args_is_help=True)
app.add_typer(alert_app, name="alert")


@alert_app.command("test")
def alert_test(receiver: str = typer.Argument(..., help="A receiver's name from the config."),
               config: Path = ConfigOpt,
               as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON.")) -> None:
    """Send a sample notification (marked TEST) to one receiver now; exit 1 if it fails."""
    from alerts.engine import send_test

    cfg = load_config(config)
    with user_errors():
        try:
            result = asyncio.run(send_test(cfg, receiver))
        except ValueError as e:
            raise fail(f"receiver: {e}", 2) from None
    if as_json:
        print_json({"receiver": receiver, "outcome": result.outcome, "error": result.error or None})
    elif result.outcome == "ok":
        print(f"ok: a test notification reached {receiver}")
    else:
        Console(stderr=True).print(f"failed: {safe(result.error)}", markup=False)
    if result.outcome != "ok":
        raise typer.Exit(1)


silence_app = typer.Typer(help="Mute notifications matching a symbol, kind or account for a while.",
                          no_args_is_help=True)
app.add_typer(silence_app, name="silence")


def _silences(config: Path):
    from alerts.silence import SilenceTable

    cfg = load_config(config)
    Path(cfg.store.path).parent.mkdir(parents=True, exist_ok=True)
    return SilenceTable(cfg.store.path)


@silence_app.command("add")
def silence_add(
    config: Path = ConfigOpt,
    symbol: Optional[str] = typer.Option(None, "--symbol", help="Symbol glob, e.g. 'DOGE-*'."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Anomaly kind, e.g. cancel_burst."),
    account: Optional[str] = typer.Option(None, "--account", help="Account glob."),
    duration: str = typer.Option(..., "--for", help="How long, e.g. 30m, 2h."),
    comment: str = typer.Option("", "--comment", help="Why (shown in `silence list`)."),
) -> None:
    """Add a silence; the running daemon honours it within seconds."""
    seconds = parse_duration("--for", duration)
    try:
        s = _silences(config).add(symbol=symbol, kind=kind, account=account, seconds=seconds, comment=comment)
    except ValueError as e:
        raise fail(str(e), 2) from None
    print(s.id)


@silence_app.command("list")
def silence_list(config: Path = ConfigOpt, as_json: bool = typer.Option(False, "--json"),
                 expired: bool = typer.Option(False, "--expired", help="Include expired silences.")) -> None:
    """Active silences (and expired ones with --expired)."""
    rows = [msgspec.structs.asdict(s) for s in _silences(config).all(include_expired=expired)]
    if as_json:
        print_json(rows)
        return
    t = make_table(f"{len(rows)} silences", ("id", "symbol", "kind", "account", "until (UTC)", "comment"))
    for r in rows:
        t.add_row(safe(r["id"]), safe(r["symbol"] or "*"), safe(r["kind"] or "*"), safe(r["account"] or "*"),
                  fmt_ts(int(r["ends_at"] * 1000)), safe(r["comment"]))
    Console().print(t)


@silence_app.command("expire")
def silence_expire(silence_id: str = typer.Argument(...), config: Path = ConfigOpt) -> None:
    """End a silence now."""
    if not _silences(config).expire(silence_id):
        raise fail(f"no active silence {silence_id!r}", 1)
    print(f"expired {silence_id}")


@app.command()
def demo(
    duration: float = typer.Option(120.0, "--duration", help="Seconds of wall time to run."),
    speed: float = typer.Option(15.0, "--speed", help="Simulated seconds per wall second."),
    scenario: str = typer.Option("mixed", "--scenario", help="Which labelled scenario the simulator plays."),
    seed: int = typer.Option(7, "--seed", help="The simulator's random seed."),
    symbols: int = typer.Option(6, "--symbols", min=1, max=8, help="How many perpetuals to simulate."),
    accounts: int = typer.Option(3000, "--accounts", min=100, help="How many accounts hold positions."),
    workdir: Optional[Path] = typer.Option(None, "--dir", help="Where the demo store goes (default: a temp dir)."),
) -> None:
    """Run the built-in exchange simulator and the daemon against it, on 127.0.0.1."""
    from monitor.app.demo import run_demo
    from monitor.simulate.scenarios import SCENARIOS

    if scenario not in SCENARIOS:
        raise fail(f"--scenario: unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})", 2)
    if speed <= 0:
        raise fail("--speed: must be > 0", 2)
    with user_errors():
        code = asyncio.run(run_demo(duration, speed, seed, symbols, accounts, scenario, workdir, Console()))
    raise typer.Exit(code)


@app.command()
def simulate(
    scenario: str = typer.Option("calm", "--scenario", help="calm, cancel_burst, leverage_jump, "
                                 "thin_book_cluster, cascade, benign_surge or mixed."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Simulated seconds (default 600; mixed 3600)."),
    speed: float = typer.Option(1.0, "--speed", help="Simulated seconds per wall second; 0 with --record: "
                                "write the recording as fast as possible, without serving."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(9001, "--port"),
    record: Optional[Path] = typer.Option(None, "--record", help="Also write the stream here (one frame a line) "
                                          "and the ground truth to FILE.labels.json."),
    seed: int = typer.Option(7, "--seed"),
    symbols: int = typer.Option(6, "--symbols", min=1, max=8),
    accounts: int = typer.Option(3000, "--accounts", min=100),
) -> None:
    """Serve a labelled stress scenario over the native protocol (and/or record it)."""
    from monitor.simulate.scenarios import SCENARIOS, build
    from monitor.simulate.server import FeedServer, record_market

    if scenario not in SCENARIOS:
        raise fail(f"--scenario: unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})", 2)
    seconds = seconds or (3600.0 if scenario == "mixed" else 600.0)
    market, labels = build(scenario, seed=seed, seconds=seconds, symbols=symbols, accounts=accounts,
                           start_ts=int(time.time() * 1000))
    end_ts = market.ts + int(seconds * 1000)
    console = Console()
    if record is not None and speed == 0:
        frames = record_market(market, seconds, record)
        console.print(f"recorded {frames} frames ({seconds:g} simulated s) to {record}")
    else:
        async def serve() -> None:
            sink = record.open("wb") if record is not None else None
            server = FeedServer(market, host=host, port=port, speed=speed, record=sink)
            await server.start()
            console.print(f"serving {scenario!r} at {server.url} (speed x{speed:g}; Ctrl-C to stop)")
            try:
                while market.ts < end_ts:
                    await asyncio.sleep(0.2)
            finally:
                await server.stop()
                if sink is not None:
                    sink.close()

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve())
    if record is not None:
        out = Path(str(record) + ".labels.json")
        out.write_bytes(msgspec.json.encode(labels))
        console.print(f"labels: {out}")


@app.command()
def evaluate(
    recording: Path = typer.Argument(..., help="A recording (e.g. from `perpwatch simulate --record`)."),
    labels: Path = typer.Option(..., "--labels", help="Its ground truth (FILE.labels.json)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Detector settings (default: built-in)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Replay a labelled recording and score it strictly: recall, false alerts, cascade lead times."""
    from monitor.codecs.native import NativeCodec
    from monitor.pipeline import build_pipeline, tune_gc
    from monitor.simulate.evaluate import evaluate as run_evaluation
    from monitor.simulate.scenarios import Label
    from monitor.sources import read_recording

    for path in (recording, labels):
        if not path.exists():
            raise fail(f"no such file: {path}", 2)
    try:
        truth = msgspec.json.decode(labels.read_bytes(), type=list[Label])
    except msgspec.MsgspecError as e:
        raise fail(f"--labels: not a labels file: {e}", 2) from None
    pipeline = build_pipeline(load_config(config) if config is not None else None)  # correlator included
    tune_gc()
    t0 = time.perf_counter()
    found = pipeline.run_frames(read_recording(recording), NativeCodec())
    elapsed = time.perf_counter() - t0
    report = run_evaluation([msgspec.structs.asdict(a) for a in found], truth, pipeline.clock.first,
                            pipeline.clock.now)
    events = sum(pipeline.counts.values())
    report["anomalies_by_kind"] = dict(Counter(a.kind for a in found))
    report["events"] = events
    report["replay_events_per_s"] = round(events / elapsed) if elapsed > 0 else None
    report["simulated_hours"] = round((pipeline.clock.now - pipeline.clock.first) / 3_600_000, 3)
    if as_json:
        print(msgspec.json.encode(report).decode())
        return
    print_evaluation(report)


def print_evaluation(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title="detection by kind")
    for col in ("kind", "labels", "detected", "recall"):
        t.add_column(col)
    for row in report["per_kind"]:
        t.add_row(safe(row["kind"]), str(row["labels"]), str(row["detected"]), f"{row['recall']:.2f}")
    console.print(t)
    s = Table(show_header=False, title="stream")
    s.add_row("events replayed", f"{report['events']:,} ({report['replay_events_per_s'] or 0:,}/s)")
    s.add_row("simulated hours", str(report["simulated_hours"]))
    s.add_row("calm hours (after warm-up, outside stress windows)", str(report["unlabelled_hours"]))
    s.add_row("false alerts (per calm hour)", f"{report['false_alerts']} ({report['false_alerts_per_hour']})")
    if "false_incidents" in report:
        s.add_row("false episodes per (kind, symbol) (per calm hour)",
                  f"{report['false_incidents']} ({report['false_incidents_per_hour']})")
        s.add_row("warm-up alerts (apart)", str(report["warmup_alerts"]))
    s.add_row("alerts during benign surges", str(report["benign_surge_alerts"]))
    if "calm_burst_alerts" in report:
        s.add_row("alerts during calm bursts", str(report["calm_burst_alerts"]))
    s.add_row("cascade lead before 1st forced liquidation (s)",
              safe(", ".join(f"{c['symbol']} {c['lead_s']}" for c in report["cascades"])) or "-")
    s.add_row("median cascade lead (s)", str(report["median_cascade_lead_s"]))
    if "max_anomalies_per_episode" in report:
        s.add_row("max anomalies per episode and kind", str(report["max_anomalies_per_episode"]))
    console.print(s)


def print_json(obj) -> None:
    sys.stdout.write(msgspec.json.encode(obj).decode() + "\n")


def make_table(title: str, columns: tuple[str, ...]) -> Table:
    t = Table(title=title)  # titles are ours; every cell from data goes through safe()
    for col in columns:
        t.add_column(col, overflow="fold")
    return t


def print_anomaly_table(rows: list[dict], console: Console | None = None) -> None:
    console = console or Console()
    t = make_table(f"{len(rows)} anomalies (newest first)",
                   ("time (UTC)", "kind", "severity", "symbol", "account", "score", "detail"))
    for r in rows:
        sev = r["severity"]
        t.add_row(fmt_ts(r["ts"]), safe(r["kind"]), sev_cell(sev), safe(r["symbol"] or ""), safe(r["account"] or ""),
                  f"{r['score']:.3g}", summarize_detail(r["detail"]))
    console.print(t)


@app.command()
def whatif(
    symbol: str = typer.Option(..., "--symbol", "-s", help="The symbol to shock."),
    shock: str = typer.Option(..., "--shock", help="The move, e.g. -2% or 0.5%."),
    config: Path = ConfigOpt,
    recording: Optional[Path] = typer.Option(None, "--recording", help="Replay this recording instead of reading "
                                             "the running daemon's latest checkpoint."),
    at: Optional[str] = typer.Option(None, "--at", help="With --recording: stop at this event time "
                                     "(epoch ms or ISO 8601; default: its end)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="The recording's codec (default: the first source's)."),
    as_json: bool = typer.Option(False, "--json", help="Print the path as JSON."),
) -> None:
    """If SYMBOL moved SHOCK now: what liquidates, how far the price runs, which symbol is next."""
    from monitor import logs
    from monitor.app import whatif as w
    from monitor.codecs.formats import FORMATS

    cfg = load_config(config)
    logs.configure("warning")  # to stderr: stdout is the answer
    try:
        move = w.parse_shock(shock)
        if recording is not None:
            f = fmt or (cfg.sources[0].format if cfg.sources else "perpwatch")
            if f not in FORMATS:
                raise w.WhatIfError(f"--format: unknown format {f!r} (known: {', '.join(FORMATS)})")
            state, now = w.state_from_recording(cfg, recording, w.parse_at(at), f)
        else:
            state, now = w.state_from_checkpoint(cfg)
        out = w.report(state, now, symbol, move, w.margin_terms(cfg))
    except w.WhatIfError as e:
        raise fail(str(e), 2 if str(e).startswith("--") else 1) from None
    if as_json:
        print_json(out)
        return
    console = Console()
    console.print(safe(out["text"]), markup=False)
    t = make_table(f"what if {symbol} {shock} (event time {out['event_time']})",
                   ("round", "symbol", "price before", "after", "liquidated", "accounts", "cross", "depth eaten"))
    for i, rnd in enumerate(out["rounds"], 1):
        for r in rnd:
            t.add_row(str(i), safe(r["symbol"]), f"{r['price_before']:.6g}", f"{r['price_after']:.6g}",
                      money(r["liquidated_notional"]), str(r["accounts"]), str(r["cross_accounts"]),
                      money(r["depth_consumed"]) + (" (exhausted)" if r["exhausted"] else ""))
    console.print(t)
    crit = out.get("critical_shock")
    console.print(f"critical shock: {crit * 100:+.3g}% ({safe(out['critical_path'])})" if crit is not None else
                  f"critical shock: none within {', '.join(f'{x:.1%}' for x in out['ladder'])} both ways", markup=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
