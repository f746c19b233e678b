"""``perpwatch demo``: the built-in exchange simulator feeding the real daemon.

Three parties run in one process on 127.0.0.1: the simulator serves the native protocol
over a websocket, the daemon connects to it like to any exchange, and a webhook receiver
(the risk team's side) gets the signed incident notifications and checks every
signature. The live view shows the stream, the anomalies as they are stored, the
incidents as the receiver hears them, and the ground truth the simulator injects; the
summary scores the run against that truth. The demo's config file is written beside its
store, so the ordinary CLI can query the run afterwards.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from monitor import logs
from monitor.config import load
from monitor.daemon import Daemon
from monitor.events import Anomaly, max_severity
from monitor.simulate.scenarios import build
from monitor.simulate.receiver import WebhookReceiver
from monitor.store import Store
from monitor.simulate.server import FeedServer

SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}
SECRET_ENV = "PERPWATCH_DEMO_HOOK_SECRET"


class AnomalyGroup:
    """Anomalies of one kind on one symbol: how many, from how many accounts, the latest."""

    __slots__ = ("count", "accounts", "latest", "worst")

    def __init__(self, a: Anomaly) -> None:
        self.count, self.accounts, self.latest, self.worst = 0, set(), a, a.severity


class ConsoleSink:
    """The live view's memory: anomalies grouped by (kind, symbol), newest group first.
    Bounded by kinds x symbols; each group remembers at most ``max_accounts`` accounts."""

    def __init__(self, keep: int = 12, max_accounts: int = 10_000) -> None:
        self.kinds: Counter[str] = Counter()
        self.groups: dict[tuple[str, str], AnomalyGroup] = {}
        self.keep = keep
        self.max_accounts = max_accounts

    async def handle(self, anomalies: list[Anomaly], incidents: list = ()) -> None:
        for a in anomalies:
            self.kinds[a.kind] += 1
            key = (a.kind, a.symbol or "")
            g = self.groups.pop(key, None) or AnomalyGroup(a)
            self.groups[key] = g  # re-inserted: the newest group last
            g.count += 1
            g.latest = a
            g.worst = max_severity(g.worst, a.severity)
            if a.account and len(g.accounts) < self.max_accounts:
                g.accounts.add(a.account)

    async def drain(self, deadline: float) -> None:
        return None

    def table(self) -> Table:
        from monitor.app.render import fmt_ts, summarize_detail

        t = Table(expand=True, title="anomalies by kind and symbol, latest first (event time)", title_justify="left")
        for col, kw in (("last", {"no_wrap": True}), ("worst", {}), ("kind", {}), ("symbol", {}), ("count", {}),
                        ("accounts", {}), ("latest detail", {"ratio": 1, "overflow": "ellipsis", "no_wrap": True})):
            t.add_column(col, **kw)
        for (kind, symbol), g in list(reversed(self.groups.items()))[:self.keep]:
            style = SEVERITY_STYLE.get(g.worst, "")
            a = g.latest
            who = f"{len(g.accounts):,}" if g.accounts else "-"
            t.add_row(fmt_ts(a.ts)[11:], f"[{style}]{g.worst}[/]", kind, symbol, f"{g.count:,}", who,
                      (f"{a.account}: " if a.account else "") + summarize_detail(a.detail, 200))
        return t


def write_demo_config(workdir: Path, feed_url: str, hook_url: str) -> Path:
    path = workdir / "demo.toml"
    path.write_text(f"""# written by `perpwatch demo`
[[sources]]
name = "simulator"
url = "{feed_url}"
format = "perpwatch"

[store]
path = "{workdir / 'perpwatch.db'}"

[[alerts.receivers]]
name = "demo-hook"
kind = "webhook"
url = "{hook_url}"
secret_env = "{SECRET_ENV}"

[[alerts.routes]]
receiver = "demo-hook"
min_severity = "info"
group_wait = "0s"
group_interval = "2s"

[metrics]
enabled = false

[logging]
level = "warning"
format = "console"
""")
    return path


async def run_demo(duration: float, speed: float, seed: int, symbols: int, accounts: int,
                   scenario: str, workdir: Path | None, console: Console) -> int:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="perpwatch-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    market, labels = build(scenario, seed=seed, seconds=max(duration * speed, 60.0), symbols=symbols,
                           accounts=accounts, start_ts=int(time.time() * 1000))
    server = FeedServer(market, speed=speed)
    await server.start()
    secret = os.environ.setdefault(SECRET_ENV, secrets.token_hex(16))
    receiver = WebhookReceiver(secret.encode())
    await receiver.start()
    cfg_path = write_demo_config(workdir, server.url, receiver.url)
    cfg = load(cfg_path)
    logs.configure(cfg.logging.level, cfg.logging.format)
    sink = ConsoleSink()
    daemon = Daemon(cfg, sinks=[sink])
    console.rule("[bold]perpwatch demo")
    console.print(f"simulated exchange at {server.url}: scenario {scenario!r}, {symbols} symbols, "
                  f"{accounts:,} accounts, x{speed:g} speed, seed {seed}; store {cfg.store.path}; "
                  f"signed webhooks to {receiver.url}")
    loop = asyncio.get_running_loop()
    stopper = loop.call_later(duration, daemon.request_stop)
    t0 = time.monotonic()
    run = asyncio.create_task(daemon.run())
    try:
        with Live(view(daemon, server, sink, receiver, labels, t0), console=console, refresh_per_second=4,
                  transient=False) as live:
            while not run.done():
                await asyncio.wait([run], timeout=0.5)
                live.update(view(daemon, server, sink, receiver, labels, t0))
        code = run.result()
    finally:
        stopper.cancel()
        await server.stop()
        await receiver.stop()
    console.print(summary_table(daemon, server, sink, receiver, time.monotonic() - t0))
    console.print(truth_table(daemon, labels))
    pw = command_name()
    console.print(f"\nquery this run:  {pw} anomalies --config {cfg_path}\n"
                  f"                 {pw} incidents --config {cfg_path}")
    return code


def incidents_table(receiver: WebhookReceiver, t0: float, keep: int = 8) -> Table:
    t = Table(expand=True, title=f"incidents heard at {receiver.url} ({receiver.verified} signed POSTs verified, "
                                 f"{receiver.rejected} rejected)", title_justify="left")
    for col, kw in (("heard", {"no_wrap": True}), ("incident", {"no_wrap": True}), ("severity", {}),
                    ("anomalies", {}), ("posts", {}), ("title", {"ratio": 1, "overflow": "ellipsis", "no_wrap": True})):
        t.add_column(col, **kw)
    heard = sorted(receiver.incidents.items(), key=lambda kv: kv[1].last_wall, reverse=True)[:keep]
    for incident_id, h in heard:
        sev = h.payload.get("severity", "")
        t.add_row(f"+{h.first_wall - t0:,.1f} s", incident_id, f"[{SEVERITY_STYLE.get(sev, '')}]{sev}[/]",
                  str(len(h.payload.get("anomalies", []))), str(h.posts), str(h.payload.get("title", "")))
    return t


def warmup_seconds(daemon: Daemon) -> float:
    """The longest explicit warm-up of the running detectors, in seconds of event time."""
    tick_ms = daemon.pipeline.clock.tick_ms
    return max((getattr(d.config, "warmup_ticks", 0) * tick_ms / 1000 for d in daemon.pipeline.detectors), default=0.0)


def command_name() -> str:
    """How to call this perpwatch from the current directory: ``perpwatch`` when that is on
    the PATH, else the script beside this Python (``.venv/bin/perpwatch`` after ``make demo``)."""
    here = Path(sys.executable).parent / "perpwatch"
    on_path = shutil.which("perpwatch")
    if on_path and here.exists() and Path(on_path).resolve() == here.resolve():
        return "perpwatch"
    if not here.exists():
        return "perpwatch" if on_path else f"{sys.executable} -m monitor.app.cli"
    try:
        return str(here.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(here.absolute())


def view(daemon: Daemon, server: FeedServer, sink: ConsoleSink, receiver: WebhookReceiver, labels,
         t0: float) -> Group:
    elapsed = max(time.monotonic() - t0, 1e-9)
    events = sum(daemon.pipeline.counts.values())
    now = daemon.pipeline.clock.now
    sim_s = (now - daemon.pipeline.clock.first) / 1000 if now else 0.0
    stats = Table.grid(padding=(0, 3))
    stats.add_row(f"[bold]{events / elapsed:,.0f}[/] events/s", f"[bold]{events:,}[/] events",
                  f"[bold]{len(daemon.pipeline.state.marks)}[/] symbols",
                  f"[bold]{len(daemon.pipeline.state.accounts):,}[/] accounts",
                  f"simulated [bold]{sim_s:,.0f}[/] s in {elapsed:,.0f} s",
                  "anomalies: " + (", ".join(f"{k} [bold]{v}[/]" for k, v in sink.kinds.most_common()) or "none yet"))
    warmup_s = warmup_seconds(daemon)
    if sim_s < warmup_s:
        left = warmup_s - sim_s
        rate = sim_s / elapsed if sim_s > 0 else 0.0
        stats.add_row(f"[yellow]warming up[/]: the detectors learn this market's normal for the first "
                      f"{warmup_s:,.0f} s of event time and flag nothing before; {left:,.0f} s to go"
                      + (f" (~{left / rate:,.0f} s of wall time)" if rate > 0 else ""))
    injected = Table.grid(padding=(0, 2))
    for lb in labels:
        if lb.kind == "benign_surge":
            what = "benign surge (must stay silent)"
        else:
            what = f"{lb.kind} on {lb.symbol}" + (f" by {lb.account}" if lb.account else "")
        started = now >= lb.start_ts
        injected.add_row("[green]●[/]" if started else "[dim]○[/]",
                         f"+{(lb.start_ts - daemon.pipeline.clock.first) / 1000:,.0f} s" if now else "",
                         what if started else f"[dim]{what}[/]")
    return Group(Panel(stats, title="perpwatch"), sink.table(), incidents_table(receiver, t0),
                 Panel(injected, title="what the simulator injects (ground truth)"))


def summary_table(daemon: Daemon, server: FeedServer, sink: ConsoleSink, receiver: WebhookReceiver,
                  elapsed: float) -> Table:
    events = sum(daemon.pipeline.counts.values())
    t = Table(title="demo summary", show_header=False)
    t.add_row("wall time", f"{elapsed:.1f} s")
    t.add_row("events processed", f"{events:,} ({events / max(elapsed, 1e-9):,.0f}/s)")
    t.add_row("by type", ", ".join(f"{k} {v:,}" for k, v in daemon.pipeline.counts.most_common()))
    t.add_row("symbols / accounts", f"{len(daemon.pipeline.state.marks)} / {len(daemon.pipeline.state.accounts):,}")
    t.add_row("messages the simulator dropped", str(server.market.dropped))
    t.add_row("anomalies", ", ".join(f"{k} {v}" for k, v in sink.kinds.most_common()) or "none")
    critical = sum(1 for h in receiver.incidents.values() if h.payload.get("severity") == "critical")
    t.add_row("incidents at the webhook", f"{len(receiver.incidents)} ({critical} critical), {receiver.posts} POSTs, "
                                          f"{receiver.verified} signatures verified, {receiver.rejected} rejected")
    return t


def truth_table(daemon: Daemon, labels) -> Table:
    """Each injected stress that has begun, and whether (and how early) it was flagged,
    by ``monitor.simulate.evaluate``'s own rules ("not yet" while it can still be)."""
    from monitor.simulate.evaluate import GRACE_MS, evaluate

    clock = daemon.pipeline.clock
    now = clock.now
    begun = [lb for lb in labels if lb.start_ts <= now and (lb.kind != "cascade" or (
        lb.first_liquidation_ts is not None and lb.first_liquidation_ts <= now))]
    store = Store.reader(daemon.cfg.store.path)
    try:
        found = store.anomalies(limit=None)
    finally:
        store.close()
    t = Table(title="ground truth vs what perpwatch flagged (event time)")
    for col in ("injected", "symbol", "flagged", "how"):
        t.add_column(col)
    for v in evaluate(found, begun, clock.first, now)["labels"]:
        if v["kind"] == "benign_surge":
            t.add_row("benign surge", "all", "[green]silent[/]" if not v["alerts"] else f"[red]{v['alerts']} alerts[/]",
                      "must stay silent")
        elif v["kind"] == "cascade":
            t.add_row("cascade", v["symbol"] or "", "[green]yes[/]" if v["detected"] else "[red]no[/]",
                      f"{v['lead_s']:,.0f} s before the first forced liquidation" if v["detected"] else "-")
        else:
            verdict = "[green]yes[/]" if v["detected"] else (
                "[red]no[/]" if v["end_ts"] + GRACE_MS <= now else "[dim]not yet[/]")
            how = f"{(v['first_ts'] - v['start_ts']) / 1000:,.1f} s after it began" if v["detected"] else "-"
            t.add_row(v["kind"] + (f" by {v['account']}" if v["account"] else ""), v["symbol"] or "", verdict, how)
    return t
