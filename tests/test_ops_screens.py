"""Operators' screens (issue 17): the Grafana dashboard and the Prometheus alerting rules
refer only to series the daemon exports, and promtool accepts the rules and their tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.support import ROOT, TIMEOUT, write_config

RULES = ROOT / "config" / "prometheus" / "perpwatch-rules.yml"
RULE_TESTS = ROOT / "config" / "prometheus" / "perpwatch-rules.test.yml"
DASHBOARD = ROOT / "config" / "grafana" / "perpwatch-dashboard.json"
PROMQL_FUNCTIONS = {"sum", "max", "min", "count", "rate", "increase", "histogram_quantile", "time", "by", "unless",
                    "and", "or", "le", "without", "on", "avg", "abs", "label_values"}


def exported_series(tmp_path) -> set[str]:
    """Every sample name a daemon with a receiver exposes (read from its collectors, as
    /metrics renders them; counters with _total, histograms with _bucket/_sum/_count)."""
    from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest

    from monitor.daemon import Daemon
    from monitor.ops.metrics import DaemonCollector
    from monitor.pipeline import load_config

    cfg_path = write_config(tmp_path / "pw.toml", "ws://127.0.0.1:1/feed", tmp_path / "pw.db", extra="""
[[alerts.receivers]]
name = "r"
url = "http://127.0.0.1:1/hook"
""")
    daemon = Daemon(load_config(cfg_path))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", generate_latest(registry).decode(), flags=re.M):
        names.add(name)
        names.update({"counter": [f"{name}_total"], "histogram": [f"{name}_bucket", f"{name}_sum", f"{name}_count"],
                      "info": [f"{name}_info"]}.get(kind, []))
    daemon.store.close()
    return names


def series_in(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr))
    return {w for w in words if w not in PROMQL_FUNCTIONS and not re.fullmatch(r"\d+|e\d+", w)}


def rule_exprs_plain() -> list[tuple[str, str]]:
    """(alert, expr) from the rules file, without a YAML library: single-line exprs and
    ``|`` blocks."""
    out, lines = [], RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s+- alert: (\S+)", line)
        if not m:
            continue
        expr_line = lines[i + 1]
        assert expr_line.strip().startswith("expr:"), (m.group(1), expr_line)
        expr = expr_line.split("expr:", 1)[1].strip()
        if expr == "|":
            block = []
            for nxt in lines[i + 2:]:
                if not nxt.startswith(" " * 10):
                    break
                block.append(nxt.strip())
            expr = " ".join(block)
        out.append((m.group(1), expr))
    return out


def test_rules_and_dashboard_use_only_exported_series(tmp_path):
    """Each series named by an alert rule or a dashboard panel is one the daemon exports
    (`up` aside: Prometheus makes it)."""
    exported = exported_series(tmp_path) | {"up"}
    assert {"process_cpu_seconds_total", "perpwatch_build_info", "perpwatch_notifications_sent_total"} <= exported
    rules = rule_exprs_plain()
    assert len(rules) >= 10
    for alert, expr in rules:
        unknown = series_in(expr) - exported
        assert not unknown, (alert, unknown)
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    for expr in exprs:
        unknown = series_in(expr.replace("$instance", "")) - exported
        assert not unknown, (expr, unknown)


def test_dashboard_is_provisionable():
    """The dashboard has a stable uid, asks for its Prometheus data source (no data source
    uid of ours baked in), unique panel ids and refIds, and every panel placed."""
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "perpwatch-ops" and dash["title"] and "id" not in dash
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert refs and len(refs) == len(set(refs)), p["title"]


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool absent (Debian: apt install prometheus; .ci/run installs it as root)")
def test_promtool_accepts_the_rules_and_their_tests():
    """promtool check rules passes, and promtool test rules (store not writable, a receiver
    failing while another delivers) passes."""
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(["promtool", "test", "rules", RULE_TESTS.name], capture_output=True, text=True,
                       timeout=TIMEOUT, cwd=RULE_TESTS.parent)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
