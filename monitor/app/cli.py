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
from typing import Callable, Iterator, Optional

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from monitor import config as config_mod
from monitor.config import Config, ConfigError, Duration
from monitor.app.render import clean, detail_text, fitted_table, iso, safe, sev_cell, sev_text
from monitor.fmt import money
from monitor.store import Store, StoreError

DEFAULT_CONFIG = Path("/etc/perpwatch/perpwatch.toml")
CONFIG_ENV = "PERPWATCH_CONFIG"

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="perpwatch: early warning for perpetual-futures exchanges.\n\n"
                       f"Exit status: 0 ok; 1 check failed, not found or daemon unreachable; 2 usage or "
                       f"config error. --config defaults to ${CONFIG_ENV}, then {DEFAULT_CONFIG}.")
err = Console(stderr=True, soft_wrap=True)


def version_text() -> str:
    from monitor.ops.build import build_info

    info = build_info()
    return f"perpwatch {info['version']} (python {info['python']})"


def _print_version(value: bool) -> None:
    if value:
        print(version_text())
        raise typer.Exit(0)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", "-V", help="Print the version and exit.",
                                       callback=_print_version, is_eager=True)) -> None:
    """perpwatch: early warning for perpetual-futures exchanges."""


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]perpwatch:[/] {escape(clean(message))}", highlight=False)
    return typer.Exit(code)


def config_failed(e: ConfigError) -> typer.Exit:
    """Every problem of a config, one line each; exit 2."""
    for problem in e.errors:
        err.print(f"[bold red]perpwatch:[/] config error: {escape(clean(str(problem)))}", highlight=False)
    return typer.Exit(2)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line and an exit status."""
    try:
        yield
    except ConfigError as e:
        raise config_failed(e) from None
    except StoreError as e:
        raise fail(str(e), 1) from None


def load_config(path: Path) -> Config:
    from monitor.pipeline import load_config as load_checked

    if path == DEFAULT_CONFIG and not path.exists():
        raise fail(f"no config file at {DEFAULT_CONFIG}: pass --config FILE or set {CONFIG_ENV}", 2)
    with user_errors():
        return load_checked(path)


def parse_duration(flag: str, text: str | None, positive: bool = False) -> float | None:
    if text is None:
        return None
    try:
        seconds = Duration.parse(text).seconds
    except ValueError as e:
        raise fail(f"{flag}: {e}", 2) from None
    if positive and seconds <= 0:
        raise fail(f"{flag}: must be longer than 0s, got {text!r}", 2)
    return seconds


def check_kind(flag: str, kind: str | None) -> None:
    from monitor.pipeline import unknown_kind

    why = unknown_kind(kind) if kind is not None else None
    if why:
        raise fail(f"{flag}: {why}", 2)


def existing_store(cfg: Config) -> Path | None:
    """The store's path if the file exists (read-only commands never create it)."""
    path = Path(cfg.store.path)
    return path if path.exists() else None


ConfigOpt = typer.Option(DEFAULT_CONFIG, "--config", "-c", envvar=CONFIG_ENV, dir_okay=False,
                         help=f"TOML config file (or ${CONFIG_ENV}).")
JsonOpt = typer.Option(False, "--json", help="Print JSON (times as epoch ms, with ISO 8601 beside them).")
WideOpt = typer.Option(False, "--wide", "-w", help="Show every cell whole (the table may be wider than the terminal).")


def print_fitted(title: str, headers: list[str], rows: list[list], wide: bool, minimum: dict[str, int] | None = None,
                 console: Console | None = None) -> None:
    console = console or Console()
    width = console.width
    if wide:
        console = Console(width=100_000, file=console.file)
    console.print(fitted_table(title, headers, rows, width, wide, minimum))


def secret_warnings(cfg: Config) -> list[ConfigError]:
    """Secrets (URLs and HMAC keys from env or files) the config names but this environment
    does not provide: a warning for ``check-config`` (the service may provide them), an
    error for ``run``. A secret URL that is there but malformed is an error everywhere
    (``_deep_check``)."""
    out = []
    for i, r in enumerate(cfg.alerts.receivers):
        k = f"alerts.receivers[{i}]"
        for key, env, file in ((f"{k}.url", r.url_env, r.url_file), (f"{k}.secret", r.secret_env, r.secret_file)):
            try:
                config_mod.resolve_secret(key, env, file)
            except ConfigError as e:
                out.append(e)
    return out


@app.command("check-config")
def check_config(
    file: Optional[Path] = typer.Argument(None, help=f"TOML config file (default: --config, ${CONFIG_ENV}, "
                                          f"then {DEFAULT_CONFIG}).", show_default=False),
    config: Path = ConfigOpt,
    strict: bool = typer.Option(False, "--strict", help="A secret that is not available here is an error (exit 2)."),
    as_json: bool = JsonOpt,
) -> None:
    """Validate a config file without running: every problem at once (exit 2 names each key).

    A secret named by *_env or *_file that this environment lacks is a warning (the service
    that runs it may have it), an error with --strict; `run` always refuses it."""
    file = file or config
    if as_json:
        try:
            from monitor.pipeline import load_config as load_checked

            if file == DEFAULT_CONFIG and not file.exists():
                raise ConfigError("", f"no config file at {DEFAULT_CONFIG}: pass a FILE or set {CONFIG_ENV}")
            cfg = load_checked(file)
            problems = _deep_check(cfg)
        except ConfigError as e:
            print_json({"ok": False, "file": str(file), "errors": [{"key": x.key, "message": x.message}
                                                                   for x in e.errors], "warnings": []})
            raise typer.Exit(2) from None
        warnings = secret_warnings(cfg)
        errors = problems + (warnings if strict else [])
        print_json({"ok": not errors, "file": str(file), "sources": len(cfg.sources),
                    "receivers": len(cfg.alerts.receivers), "routes": len(cfg.alerts.routes),
                    "errors": [{"key": x.key, "message": x.message} for x in errors],
                    "warnings": [] if strict else [{"key": x.key, "message": x.message} for x in warnings]})
        raise typer.Exit(2 if errors else 0)
    cfg = load_config(file)
    with user_errors():
        problems = _deep_check(cfg)
        if problems:
            raise ConfigError.of(problems)
    warnings = secret_warnings(cfg)
    if warnings and strict:
        raise config_failed(ConfigError.of(warnings))
    for w in warnings:
        err.print(f"[yellow]perpwatch: warning:[/] {escape(clean(str(w)))} (`run` will refuse to start without it; "
                  "--strict makes this an error)", highlight=False)
    print(f"ok: {file}: {len(cfg.sources)} source(s), {len(cfg.alerts.receivers)} receiver(s), "
          f"{len(cfg.alerts.routes)} route(s)" + (f", {len(warnings)} warning(s)" if warnings else ""))


def _deep_check(cfg: Config) -> list[ConfigError]:
    """What building the sources and the pipeline would refuse."""
    from monitor.pipeline import build_pipeline
    from monitor.venues import make_session

    errs = []
    for s in cfg.sources:
        try:
            make_session(s)
        except ConfigError as e:
            errs += e.errors
    try:
        build_pipeline(cfg)
    except ConfigError as e:
        errs += e.errors
    for i, r in enumerate(cfg.alerts.receivers):
        try:
            config_mod.receiver_url(r, i)
        except ConfigError as e:
            if r.url is not None or "invalid URL" in e.message:  # missing ones are secret_warnings'
                errs.append(e)
    return errs


@app.command()
def run(config: Path = ConfigOpt) -> None:
    """Run the daemon: connect to the sources, detect, store, alert. SIGTERM drains."""
    # Until the event loop takes SIGTERM over, nothing has been received: stopping is clean.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cfg = load_config(config)
    problems = secret_warnings(cfg)
    if not cfg.sources:
        problems.insert(0, ConfigError("sources", "at least one [[sources]] entry is required to run"))
    if problems:
        raise config_failed(ConfigError.of(problems))
    from monitor import logs
    from monitor.daemon import Daemon

    logs.configure(cfg.logging.level, cfg.logging.format)
    try:
        daemon = Daemon(cfg)
    except ConfigError as e:
        raise config_failed(e) from None
    except (StoreError, OSError) as e:  # the store (or the state directory beside it) cannot be made
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise config_failed(ConfigError("store.path", f"{why} (the daemon creates the store and its "
                                        "state directory: is the path writable by this user?)")) from None
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
    with progress_of(file, f"replaying {file.name}") as frames:
        pipeline.run_items(frames(recording), lambda source: codecs.get(source, default), on_batch=store_batch)
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
        if isinstance(v, dict):
            v = ", ".join(f"{name} {n:,}" for name, n in sorted(v.items(), key=lambda kv: -kv[1])) or "none"
        elif isinstance(v, int):
            v = f"{v:,}"
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
    wide: bool = WideOpt,
) -> None:
    """List stored anomalies, newest first (the table says how many of how many)."""
    if limit is None and not as_json:
        limit = 100
    cfg = load_config(config)
    since_s = parse_duration("--since", since)
    check_kind("--kind", kind)
    path = existing_store(cfg)
    total = 0
    if path is None:
        rows: list[dict] = []
        if not as_json:
            err.print(f"no store yet at {safe(cfg.store.path)} (nothing detected, or the daemon has not run)")
    else:
        with user_errors():
            store = Store.reader(path)
            rows = store.anomalies(since_s=since_s, kind=kind, symbol=symbol, limit=limit)
            total = len(rows) if limit is None or len(rows) < limit else store.count_anomalies(
                since_s=since_s, kind=kind, symbol=symbol)
    if as_json:
        print_json(rows)  # exactly the contract's fields (CONTRACT section 4)
        return
    print_anomaly_table(rows, total=total, wide=wide)


def _incident_table(path: Path | None):
    from alerts.incidents import IncidentTable

    if path is None:
        return None
    with user_errors():
        return IncidentTable(path, readonly=True)


def _with_iso(row: dict, *fields: str, seconds: bool = False) -> dict:
    """``row`` with ``<field>_iso`` (ISO 8601, UTC) beside each epoch field it has."""
    for f in fields:
        if f in row:
            v = row[f]
            row[f"{f}_iso"] = iso(v * 1000 if seconds and v is not None else v)
    return row


@app.command()
def incidents(
    config: Path = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array."),
    limit: int = typer.Option(50, "--limit", min=1),
    wide: bool = WideOpt,
) -> None:
    """List incidents, most recently active first."""
    cfg = load_config(config)
    table = _incident_table(existing_store(cfg))
    with user_errors():
        rows = table.list(limit) if table is not None else []
        total = len(rows) if len(rows) < limit else table.count()
    for r in rows:
        r.pop("timeline")
        _with_iso(r, "opened_ts", "last_ts")
    if as_json:
        print_json(rows)
        return
    title = f"{len(rows)} of {total:,} incidents" if total > len(rows) else plural(len(rows), "incident")
    headers = ["id", "status", "severity", "opened (UTC)", "last (UTC)", "title"]
    cells = [[r["id"], r["status"], sev_text(r["severity"]), iso(r["opened_ts"], ms=False), iso(r["last_ts"], ms=False),
              r["title"]] for r in rows]
    if not wide:  # room for the title; --wide and --json have when it opened
        headers.pop(3)
        for c in cells:
            c.pop(3)
    print_fitted(title + ", most recent first" + ("" if wide else " (--wide: whole cells)"), headers, cells, wide,
                 minimum={"id": 999, "status": 9, "opened (UTC)": 20, "last (UTC)": 20, "severity": 8})


@app.command()
def incident(
    incident_id: str = typer.Argument(..., help="An incident id from `perpwatch incidents`."),
    config: Path = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the incident as JSON."),
    wide: bool = WideOpt,
) -> None:
    """One incident: its evidence and its timeline (which anomaly joined when and why)."""
    cfg = load_config(config)
    table = _incident_table(existing_store(cfg))
    with user_errors():
        row = table.get(incident_id) if table is not None else None
    if row is None:
        raise fail(f"no incident {incident_id!r} in {cfg.store.path}", 1)
    _with_iso(row, "opened_ts", "last_ts")
    for e in row["timeline"]:
        _with_iso(e, "ts")
    if as_json:
        print_json(row)
        return
    console = Console()
    sev = row["severity"]
    console.print(f"[bold]{safe(row['id'])}[/]  {sev_cell(sev)}  {safe(row['status'])}  {safe(row['title'])}")
    console.print(f"opened {iso(row['opened_ts'])}, last {iso(row['last_ts'])} (event time)")
    console.print(f"symbols: {safe(', '.join(row['symbols'])) or '-'}   "
                  f"accounts: {safe(', '.join(row['accounts'][:20])) or '-'}")
    print_fitted("timeline (event time)", ["time (UTC)", "kind", "severity", "symbol", "account", "why it joined"],
                 [[iso(e["ts"]), e["kind"], sev_text(e["severity"]), e["symbol"] or "", e["account"] or "",
                   e["reason"]] for e in row["timeline"]], wide,
                 minimum={"time (UTC)": 24, "kind": 13, "severity": 8}, console=console)


@app.command()
def export(
    out: Path = typer.Argument(..., help="Output file."),
    config: Path = ConfigOpt,
    since: str = typer.Option("1d", "--since", help="Anomalies of the last DURATION."),
    fmt: str = typer.Option("parquet", "--format", help="parquet or csv."),
    as_json: bool = JsonOpt,
) -> None:
    """Export stored anomalies with polars (detail as a JSON column)."""
    import polars as pl

    if fmt not in ("parquet", "csv"):
        raise fail(f"--format: expected parquet or csv, got {fmt!r}", 2)
    cfg = load_config(config)
    since_s = parse_duration("--since", since)
    if not out.parent.is_dir():
        raise fail(f"cannot write {out}: no such directory {str(out.parent)!r}", 1)
    if out.is_dir():
        raise fail(f"cannot write {out}: it is a directory", 1)
    path = existing_store(cfg)
    with user_errors():
        rows = Store.reader(path).anomalies(since_s=since_s, limit=None) if path is not None else []
    schema = {"id": pl.Utf8, "kind": pl.Utf8, "symbol": pl.Utf8, "account": pl.Utf8, "ts": pl.Int64,
              "score": pl.Float64, "severity": pl.Utf8, "detail": pl.Utf8}
    df = pl.DataFrame([{**r, "detail": msgspec.json.encode(r["detail"]).decode()} for r in rows], schema=schema)
    try:
        if fmt == "parquet":
            df.write_parquet(out)
        else:
            df.write_csv(out)
    except OSError as e:
        raise fail(f"cannot write {out}: {e.strerror or e}", 1) from None
    if as_json:
        print_json({"anomalies": df.height, "out": str(out), "format": fmt})
        return
    print(f"{df.height} anomalies -> {out}")


@app.command()
def status(config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Sources, lag, open incidents and pending notifications, from the store and /metrics.

    Exit 1 when the daemon's /metrics cannot be reached (it is not running, or elsewhere)."""
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
            report["latest_anomaly_ts_iso"] = iso(report["latest_anomaly_ts"])
            report["open_incidents"] = IncidentTable(path, readonly=True).firing()
            report["pending_notifications"] = Outbox(path, readonly=True).pending()
    reachable = True
    if cfg.metrics.enabled:
        host, port = config_mod.listen_address(cfg)
        per_source = {"perpwatch_source_connected": "connected", "perpwatch_source_last_frame_seconds": "last_frame_wall",
                      "perpwatch_frames_total": "frames"}
        try:
            samples = scrape(host, port)
        except OSError as e:
            reachable = False
            report["metrics"] = f"unreachable ({e.__class__.__name__}): is the daemon running?"
        else:
            report["metrics"] = "up"
            for name, labels, value in samples:
                if name in per_source and "source" in labels:
                    report["sources"].setdefault(labels["source"], {})[per_source[name]] = value
                elif name == "perpwatch_event_lag_seconds" and not labels:
                    report["event_lag_s"] = value
            for s in report["sources"].values():
                if s.get("last_frame_wall"):
                    s["last_frame_wall_iso"] = iso(s["last_frame_wall"] * 1000)
    else:
        report["metrics"] = "disabled ([metrics] enabled = false)"
    if as_json:
        print_json(report)
        raise typer.Exit(0 if reachable else 1)
    t = Table.grid(padding=(0, 2))
    shown = {"store": report["store"], "metrics": report["metrics"]}
    if "anomalies_last_hour" in report:
        shown["anomalies stored in the last hour"] = f"{report['anomalies_last_hour']:,}"
        shown["latest anomaly (event time)"] = iso(report["latest_anomaly_ts"]) or "none yet"
        shown["open incidents"] = f"{report['open_incidents']:,}"
        shown["pending notifications"] = f"{report['pending_notifications']:,}"
    else:
        shown["store file"] = "not created yet (the daemon has not run with this config)"
    if "event_lag_s" in report:
        shown["event lag"] = f"{report['event_lag_s']:.1f} s"
    for k, v in shown.items():
        t.add_row(k, safe(v))
    for name, s in report["sources"].items():
        age = time.time() - s["last_frame_wall"] if s.get("last_frame_wall") else None
        state = "connected" if s.get("connected") else "DOWN"
        last = f"last {age:.1f} s ago ({iso(s['last_frame_wall'] * 1000, ms=False)})" if age is not None else "no frame yet"
        t.add_row(f"source {safe(name)}", f"{state}, {int(s.get('frames', 0)):,} frames, {safe(last)}")
    from rich.panel import Panel

    Console().print(Panel(t, title="perpwatch status"))
    raise typer.Exit(0 if reachable else 1)


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


def _silence_rows(rows: list) -> list[dict]:
    return [_with_iso(msgspec.structs.asdict(s), "starts_at", "ends_at", seconds=True) for s in rows]


@silence_app.command("add")
def silence_add(
    config: Path = ConfigOpt,
    symbol: Optional[str] = typer.Option(None, "--symbol", help="Symbol glob, e.g. 'DOGE-*'."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Anomaly kind, e.g. cancel_burst."),
    account: Optional[str] = typer.Option(None, "--account", help="Account glob."),
    duration: str = typer.Option(..., "--for", help="How long, e.g. 30m, 2h."),
    comment: str = typer.Option("", "--comment", help="Why (shown in `silence list`)."),
    as_json: bool = JsonOpt,
) -> None:
    """Add a silence; the running daemon honours it within seconds. Prints its id."""
    from alerts.silence import SilenceTable

    seconds = parse_duration("--for", duration, positive=True)
    check_kind("--kind", kind)
    if symbol is None and kind is None and account is None:
        raise fail("a silence needs at least one of --symbol, --kind, --account", 2)
    cfg = load_config(config)
    with user_errors():
        s = SilenceTable(cfg.store.path).add(symbol=symbol, kind=kind, account=account, seconds=seconds,
                                             comment=comment)
    if as_json:
        print_json(_silence_rows([s])[0])
        return
    print(s.id)


@silence_app.command("list")
def silence_list(config: Path = ConfigOpt, as_json: bool = JsonOpt,
                 expired: bool = typer.Option(False, "--expired", help="Include expired silences."),
                 wide: bool = WideOpt) -> None:
    """Active silences (and expired ones with --expired). Never creates the store."""
    from alerts.silence import SilenceTable

    cfg = load_config(config)
    path = existing_store(cfg)
    with user_errors():
        rows = _silence_rows(SilenceTable(path, readonly=True).all(include_expired=expired)) if path else []
    if as_json:
        print_json(rows)
        return
    print_fitted(plural(len(rows), "silence"), ["id", "symbol", "kind", "account", "from (UTC)", "until (UTC)", "comment"],
                 [[r["id"], r["symbol"] or "*", r["kind"] or "*", r["account"] or "*", iso(r["starts_at"] * 1000, ms=False),
                   iso(r["ends_at"] * 1000, ms=False), r["comment"]] for r in rows], wide,
                 minimum={"id": 999, "from (UTC)": 20, "until (UTC)": 20})


@silence_app.command("expire")
def silence_expire(silence_ids: list[str] = typer.Argument(..., help="One or more silence ids."),
                   config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """End silences now (exit 1 if any id is not an active silence)."""
    from alerts.silence import SilenceTable

    cfg = load_config(config)
    path = existing_store(cfg)
    expired, missing = [], []
    with user_errors():
        table = SilenceTable(path) if path is not None else None
        for sid in silence_ids:
            (expired if table is not None and table.expire(sid) else missing).append(sid)
    if as_json:
        print_json({"expired": expired, "not_found": missing})
    else:
        for sid in expired:
            print(f"expired {sid}")
        for sid in missing:
            err.print(f"[bold red]perpwatch:[/] no active silence {escape(clean(repr(sid)))}", highlight=False)
    if missing:
        raise typer.Exit(1)


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
    as_json: bool = typer.Option(False, "--json", help="With --record --speed 0: print what was written as JSON."),
) -> None:
    """Serve a labelled stress scenario over the native protocol (and/or record it)."""
    from monitor.simulate.scenarios import SCENARIOS, build
    from monitor.simulate.server import FeedServer, record_market

    if scenario not in SCENARIOS:
        raise fail(f"--scenario: unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})", 2)
    if speed < 0 or (speed == 0 and record is None):
        raise fail("--speed: must be > 0 (or 0 with --record: write the recording offline)", 2)
    if record is not None and not record.parent.is_dir():
        raise fail(f"--record: no such directory {str(record.parent)!r}", 1)
    seconds = seconds or (3600.0 if scenario == "mixed" else 600.0)
    start_ts = int(time.time() * 1000)
    market, labels = build(scenario, seed=seed, seconds=seconds, symbols=symbols, accounts=accounts,
                           start_ts=start_ts)
    end_ts = market.ts + int(seconds * 1000)
    console = Console()
    if record is not None and speed == 0:
        with progress_while(f"recording {record.name}", seconds, "simulated s",
                            lambda: (market.ts - start_ts) / 1000):
            try:
                frames = record_market(market, seconds, record)
            except OSError as e:
                raise fail(f"--record: cannot write {record}: {e.strerror or e}", 1) from None
        if as_json:
            out = Path(str(record) + ".labels.json")
            out.write_bytes(msgspec.json.encode(labels))
            print_json({"frames": frames, "simulated_s": seconds, "recording": str(record), "labels": str(out),
                        "start_ts": start_ts, "start_ts_iso": iso(start_ts)})
            return
        console.print(f"recorded {frames:,} frames ({seconds:g} simulated s) to {record}")
    else:
        async def serve() -> None:
            sink = record.open("wb") if record is not None else None
            server = FeedServer(market, host=host, port=port, speed=speed, record=sink)
            try:
                await server.start()
            except OSError as e:
                raise fail(f"cannot listen on {host}:{port}: {e.strerror or e}", 1) from None
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
    with progress_of(recording, f"evaluating {recording.name}") as frames:
        found = pipeline.run_frames(frames(read_recording(recording)), NativeCodec())
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


def _progress(unit: str):
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                    TextColumn("{task.fields[done]}"), TimeRemainingColumn(), console=err, transient=True)


def _uncompressed_size(path: Path) -> int:
    """The size a recording reads as: a gzip's trailer holds it (modulo 4 GiB)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(2) != b"\x1f\x8b" or size < 18:
            return size
        f.seek(-4, 2)
        return int.from_bytes(f.read(4), "little") or size


@contextlib.contextmanager
def progress_of(path: Path, description: str) -> Iterator:
    """A progress bar over a recording's bytes on stderr when stderr is a terminal (nothing
    otherwise); yields a wrapper for the recording's frames."""
    if not err.is_terminal:
        yield lambda frames: frames
        return
    total = _uncompressed_size(path)
    with _progress("bytes") as bar:
        task = bar.add_task(description, total=total, done="")

        def frames(source):
            n = done = 0
            for frame in source:  # a frame, or a recorded item (source, payload, ts)
                n += 1
                payload = frame[1] if isinstance(frame, tuple) else frame
                done += (len(payload) if isinstance(payload, (bytes, str)) else 0) + 1
                if n % 512 == 0:
                    bar.update(task, completed=min(done, total), done=f"{n:,} frames")
                yield frame
            bar.update(task, completed=total, done=f"{n:,} frames")

        yield frames


@contextlib.contextmanager
def progress_while(description: str, total: float, unit: str, completed: Callable[[], float]) -> Iterator[None]:
    """A progress bar on stderr (when it is a terminal) polling ``completed()`` while the
    block runs (it reads a counter the block advances; nothing else is shared)."""
    if not err.is_terminal:
        yield
        return
    import threading

    stop = threading.Event()
    with _progress(unit) as bar:
        task = bar.add_task(description, total=total, done="")

        def poll() -> None:
            while not stop.wait(0.1):
                bar.update(task, completed=min(completed(), total), done=f"{completed():,.0f} {unit}")

        t = threading.Thread(target=poll, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()
            bar.update(task, completed=min(completed(), total), done=f"{completed():,.0f} {unit}")


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def print_json(obj) -> None:
    sys.stdout.write(msgspec.json.encode(obj).decode() + "\n")


def print_anomaly_table(rows: list[dict], console: Console | None = None, total: int | None = None,
                        wide: bool = False) -> None:
    total = len(rows) if total is None else total
    title = f"{len(rows)} of {total:,} anomalies" if total > len(rows) else plural(len(rows), "anomaly", "anomalies")
    headers = ["time (UTC)", "kind", "severity", "symbol", "account", "score", "detail"]
    cells = [[iso(r["ts"], ms=wide), r["kind"], sev_text(r["severity"]), r["symbol"] or "", r["account"] or "",
              f"{r['score']:.3g}", detail_text(r["detail"])] for r in rows]
    if rows and not any(r["account"] for r in rows):  # symbol-level anomalies only: room for the detail
        headers.pop(4)
        for c in cells:
            c.pop(4)
    print_fitted(title + ", newest first" + ("" if wide else " (--wide: whole cells)"), headers, cells, wide,
                 minimum={"time (UTC)": 20, "kind": 17, "severity": 8, "symbol": 8, "account": 5, "score": 5,
                          "detail": 10},
                 console=console)


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
    rows = [[str(i), r["symbol"], f"{r['price_before']:.6g}", f"{r['price_after']:.6g}",
             money(r["liquidated_notional"]), str(r["accounts"]), str(r["cross_accounts"]),
             money(r["depth_consumed"]) + (" (exhausted)" if r["exhausted"] else "")]
            for i, rnd in enumerate(out["rounds"], 1) for r in rnd]
    console.print(fitted_table(f"what if {symbol} {shock} (event time {out['event_time']})",
                               ["round", "symbol", "price before", "after", "liquidated", "accounts", "cross",
                                "depth eaten"], rows, console.width))
    crit = out.get("critical_shock")
    console.print(f"critical shock: {crit * 100:+.3g}% ({safe(out['critical_path'])})" if crit is not None else
                  f"critical shock: none within {', '.join(f'{x:.1%}' for x in out['ladder'])} both ways", markup=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
