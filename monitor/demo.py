"""``perpwatch demo``: the built-in exchange simulator feeding the real daemon.

Both run in one process on 127.0.0.1: the simulator serves the native protocol over a
websocket, the daemon connects to it like to any exchange, and every anomaly is stored
and printed as it is found. The demo's config file is written beside its store, so the
ordinary CLI can query the run afterwards.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from monitor import logs
from monitor.config import load
from monitor.daemon import Daemon
from monitor.events import Anomaly
from monitor.simulate.market import Market
from monitor.simulate.server import FeedServer

SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


class ConsoleSink:
    """Prints each stored anomaly as one line."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.kinds: Counter[str] = Counter()

    async def handle(self, anomalies: list[Anomaly]) -> None:
        from monitor.cli import fmt_ts, summarize_detail

        for a in anomalies:
            self.kinds[a.kind] += 1
            style = SEVERITY_STYLE.get(a.severity, "")
            who = a.symbol or ""
            if a.account:
                who += f" {a.account}"
            self.console.print(f"[dim]{fmt_ts(a.ts)}[/] [{style}]{a.severity:8s}[/] [bold]{a.kind}[/] {who} "
                               f"score={a.score:.3g}  [dim]{summarize_detail(a.detail, 110)}[/]", highlight=False)

    async def drain(self, deadline: float) -> None:
        return None


def write_demo_config(workdir: Path, feed_url: str) -> Path:
    path = workdir / "demo.toml"
    path.write_text(f"""# written by `perpwatch demo`
[[sources]]
name = "simulator"
url = "{feed_url}"
format = "perpwatch"

[store]
path = "{workdir / 'perpwatch.db'}"

[metrics]
enabled = false

[logging]
level = "warning"
format = "console"
""")
    return path


async def run_demo(duration: float, speed: float, seed: int, symbols: int, accounts: int,
                   gap_every_s: float, workdir: Path | None, console: Console) -> int:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="perpwatch-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    market = Market(seed=seed, symbols=symbols, accounts=accounts, start_ts=int(time.time() * 1000),
                    gap_every_s=gap_every_s)
    server = FeedServer(market, speed=speed)
    await server.start()
    cfg_path = write_demo_config(workdir, server.url)
    cfg = load(cfg_path)
    logs.configure(cfg.logging.level, cfg.logging.format)
    sink = ConsoleSink(console)
    daemon = Daemon(cfg, sinks=[sink])
    console.rule("[bold]perpwatch demo")
    console.print(f"simulated exchange: {symbols} symbols, {accounts} accounts, speed x{speed:g}, "
                  f"seed {seed} at {server.url}")
    console.print(f"store: {cfg.store.path}   (Ctrl-C to stop; otherwise {duration:g} s)\n")
    loop = asyncio.get_running_loop()
    stopper = loop.call_later(duration, daemon.request_stop)
    t0 = time.monotonic()
    try:
        code = await daemon.run()
    finally:
        stopper.cancel()
        await server.stop()
    elapsed = time.monotonic() - t0
    console.print()
    console.print(summary_table(daemon, server, sink, elapsed))
    console.print(f"\nquery this run:  perpwatch anomalies --config {cfg_path}")
    return code


def summary_table(daemon: Daemon, server: FeedServer, sink: ConsoleSink, elapsed: float) -> Table:
    events = sum(daemon.pipeline.counts.values())
    t = Table(title="demo summary", show_header=False)
    t.add_row("wall time", f"{elapsed:.1f} s")
    t.add_row("events processed", f"{events:,} ({events / max(elapsed, 1e-9):,.0f}/s)")
    t.add_row("by type", ", ".join(f"{k} {v:,}" for k, v in daemon.pipeline.counts.most_common()))
    t.add_row("symbols / accounts", f"{len(daemon.pipeline.state.marks)} / {len(daemon.pipeline.state.accounts):,}")
    t.add_row("messages the simulator dropped", str(server.market.dropped))
    t.add_row("anomalies", ", ".join(f"{k} {v}" for k, v in sink.kinds.most_common()) or "none")
    return t
