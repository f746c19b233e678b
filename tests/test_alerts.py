"""Alerts, pure parts: correlation, routing timers, outbox, payloads and signatures."""

import asyncio
import hashlib
import hmac
import json

import httpx
import msgspec
from slack_sdk.models.blocks import Block

from alerts.correlate import Correlator
from alerts.dispatch import payload
from alerts.notify.slack import blocks
from alerts.notify.webhook import WebhookNotifier, sign
from alerts.outbox import Outbox
from alerts.route import RouteState, decide, matches
from monitor.config import parse
from monitor.events import Anomaly, Position
from monitor.state import MarketState
from tests.support import T0


def anomaly(kind, ts, symbol=None, account=None, severity="warning", **detail):
    return Anomaly.make(kind, T0 + ts, 5.0, severity, symbol=symbol, account=account, detail=detail)


def test_same_symbol_joins_other_symbol_does_not():
    """Anomalies on one symbol within the window share an incident; another symbol opens its own."""
    c = Correlator(window_ms=60_000)
    i1, _ = c.add(anomaly("cancel_burst", 0, "BTC"), None)
    i2, _ = c.add(anomaly("feed_gap", 10_000, "BTC"), None)
    i3, _ = c.add(anomaly("cancel_burst", 20_000, "ETH"), None)
    i4, _ = c.add(anomaly("cancel_burst", 200_000, "BTC"), None)
    assert i1 is i2 and i3 is not i1 and i4 is not i1
    assert [t["kind"] for t in i1.timeline] == ["cancel_burst", "feed_gap"]


def hold(state, account, symbol, size, mode="cross"):
    state.apply(Position(account=account, symbol=symbol, ts=T0, size=size, entry_price=100.0, leverage=10.0,
                         margin_mode=mode))


def test_shared_collateral_links_symbols():
    """An account holding a material cross position in the incident's symbol links its
    anomaly there, and the timeline says so."""
    state = MarketState()
    hold(state, "a-1", "BTC", 1.0)
    hold(state, "a-1", "ETH", 1.0)
    hold(state, "a-2", "ETH", 9.0)  # a-1 holds 10% of ETH's cross notional
    c = Correlator()
    i1, _ = c.add(anomaly("thin_book_cluster", 0, "ETH"), state)
    i2, synth = c.add(anomaly("leverage_jump", 5_000, "BTC", account="a-1"), state)
    assert i1 is i2 and i1.symbols == {"BTC", "ETH"}
    assert i1.timeline[1]["reason"] == "ETH: account a-1 holds 10.0% of its cross notional on the same collateral"


def test_links_need_material_exposure_and_a_recent_anomaly_on_the_linked_symbol():
    """A small account's other position does not link; nor does an edge to a symbol the
    incident last saw longer than link_window ago (a busy incident does not swallow it)."""
    state = MarketState()
    hold(state, "small", "BTC", 1.0)
    hold(state, "small", "ETH", 1.0)
    hold(state, "btc-only", "BTC", 1000.0)  # so the graph's BTC-ETH collateral edge is weak too
    hold(state, "whale", "ETH", 500.0)
    hold(state, "big", "SOL", 1.0)
    hold(state, "big", "ETH", 100.0)
    c = Correlator(window_ms=600_000, link_window_ms=120_000, min_account_share=0.01)
    first, _ = c.add(anomaly("thin_book_cluster", 0, "ETH"), state)
    small, _ = c.add(anomaly("leverage_jump", 1_000, "BTC", account="small"), state)  # 0.2% of ETH
    whale, _ = c.add(anomaly("cancel_burst", 100_000, "XRP", account="whale"), state)  # 83% of ETH, 100 s
    c.add(anomaly("cancel_burst", 200_000, "XRP"), state)  # keeps the incident busy on XRP
    late, _ = c.add(anomaly("leverage_jump", 300_000, "SOL", account="big"), state)  # ETH last seen 300 s ago
    assert small is not first and whale is first and late is not first
    assert first.symbols == {"ETH", "XRP"}


def test_cascade_rule_escalates_to_critical_once():
    """thin_book_cluster + cancel_burst in one incident synthesize one critical cascade_risk."""
    c = Correlator()
    c.add(anomaly("thin_book_cluster", 0, "BTC"), None)
    inc, synth = c.add(anomaly("cancel_burst", 1_000, "BTC"), None)
    assert [a.kind for a in synth] == ["cascade_risk"] and synth[0].severity == "critical"
    assert inc.severity == "critical"
    _, again = c.add(anomaly("cancel_burst", 2_000, "BTC"), None)
    assert again == []


def test_cascade_evidence_comes_from_its_own_window_only():
    """A leverage jump 400 s before a thin-book cluster on the same symbol is not evidence of
    a cascade (issue 15); one within link_window is, and the evidence names only its symbols."""
    c = Correlator(link_window_ms=120_000)
    c.add(anomaly("leverage_jump", 0, "BTC", account="a-1"), None)
    c.add(anomaly("feed_gap", 1_000, "ETH", account="a-1"), None)  # joined by the account, long before
    _, synth = c.add(anomaly("thin_book_cluster", 400_000, "BTC"), None)
    assert synth == []
    _, synth = c.add(anomaly("cancel_burst", 430_000, "BTC"), None)
    [risk] = synth
    assert [e["kind"] for e in risk.detail["evidence"]] == ["thin_book_cluster", "cancel_burst"]
    assert risk.detail["symbols"] == ["BTC"]


def test_a_busy_symbol_is_not_one_story_forever():
    """Anomalies every 5 minutes on one symbol: after max_span a new incident opens."""
    c = Correlator(window_ms=600_000, resolve_after_ms=900_000, max_span_ms=3_600_000)
    ids = [c.add(anomaly("feed_gap", t, "BTC"), None)[0].id for t in range(0, 7_200_000, 300_000)]
    assert len(set(ids)) == 2 and ids.index(ids[-1]) == 13  # 0 .. 60 min in the first, then a new one


def test_incident_resolves_after_quiet():
    """After resolve_after of event time without anomalies an incident is closed."""
    c = Correlator(window_ms=600_000, resolve_after_ms=60_000)
    i1, _ = c.add(anomaly("feed_gap", 0, "BTC"), None)
    i2, _ = c.add(anomaly("feed_gap", 120_000, "BTC"), None)
    assert i1.status == "resolved" and i2 is not i1


def cfg(routes: str):
    return parse('[store]\npath="x.db"\n[[alerts.receivers]]\nname="r"\nurl="http://127.0.0.1:1/h"\n' + routes)


def test_route_matching_and_timers():
    """Severity floor, kinds and symbol globs match; group_wait/interval/repeat gate sends."""
    r = cfg('[[alerts.routes]]\nreceiver="r"\nmin_severity="warning"\nkinds=["cancel_burst"]\n'
            'symbols=["BTC-*"]\ngroup_wait="10s"\ngroup_interval="1m"\nrepeat_interval="1h"\n').alerts.routes[0]
    assert matches(r, "critical", {"cancel_burst"}, {"BTC-PERP"})
    assert not matches(r, "info", {"cancel_burst"}, {"BTC-PERP"})
    assert not matches(r, "warning", {"feed_gap"}, {"BTC-PERP"})
    assert not matches(r, "warning", {"cancel_burst"}, {"ETH-PERP"})
    st = RouteState(now=0.0)
    assert decide(r, st, 1, 5.0) is None and decide(r, st, 1, 10.0) == "first"
    st.last_sent, st.sent_version = 10.0, 1
    assert decide(r, st, 2, 30.0) is None and decide(r, st, 2, 70.0) == "update"
    st.last_sent, st.sent_version = 70.0, 2
    assert decide(r, st, 2, 3000.0) is None and decide(r, st, 2, 3670.0) == "repeat"


def test_dispatch_plans_without_io_and_moves_timers_only_on_commit():
    """mute -> match -> timers -> payload as data: a plan the outbox never took is decided
    again at the next pass; once committed, the route waits for its repeat interval; a
    silenced incident is reported muted once per reason; closed incidents lose their timers."""
    from alerts.dispatch import Dispatcher
    from alerts.mute import Muter, Silence

    routes = cfg('[[alerts.routes]]\nreceiver="r"\ngroup_wait="0s"\nrepeat_interval="1h"\n'
                 '[[alerts.routes]]\nreceiver="r"\nmin_severity="info"\n').alerts.routes
    c = Correlator()
    inc, _ = c.add(anomaly("feed_gap", T0, "BTC-PERP"), None)
    d = Dispatcher(routes, Muter())
    first = d.plan([inc], now=100.0)
    assert [(r, i) for r, i, _ in first.batch] == [("r", inc.id)]  # the first matching route only
    assert json.loads(first.batch[0][2])["incident_id"] == inc.id
    assert [(r, i) for r, i, _ in d.plan([inc], now=101.0).batch] == [("r", inc.id)]  # not committed: again
    d.commit(first, now=101.0)
    assert d.plan([inc], now=102.0).batch == []
    d.muter.silences = [Silence("s1", "BTC-*", None, None, 0.0, 1e12, "maint")]
    assert d.plan([inc], now=103.0).newly_muted == [(inc.id, "silenced")]
    assert d.plan([inc], now=104.0).newly_muted == []  # the same reason is said once
    d.plan([], now=105.0)
    assert d.route_state == {} and d.quiet == {}


def test_outbox_collapses_pending_per_incident_and_survives_reopen(tmp_path):
    """One pending row per (receiver, incident), the latest payload; rows survive a reopen."""
    ob = Outbox(tmp_path / "pw.db")
    ob.enqueue("r", "inc-1", b"v1", now=1.0)
    ob.enqueue("r", "inc-1", b"v2", now=2.0)
    ob.enqueue("r", "inc-2", b"w1", now=2.0)
    ob.close()
    ob = Outbox(tmp_path / "pw.db")
    rows = ob.due(now=10.0)
    assert [(r[2], r[3]) for r in rows] == [("inc-1", b"v2"), ("inc-2", b"w1")]
    ob.mark_failed(rows[0][0], retry_at=100.0, error="HTTP 503")
    ob.mark_sent(rows[1][0], now=11.0)
    assert [r[2] for r in ob.due(now=50.0)] == [] and ob.pending() == 1
    ob.enqueue("r", "inc-2", b"w2", now=12.0)  # a sent incident gets a new pending row
    assert ob.pending() == 2


CONTRACT_FIELDS = {"version", "incident_id", "status", "severity", "title", "symbols", "accounts", "anomalies"}
EXTENDED_FIELDS = {"notification", "sequence", "started_ts", "started_at", "updated_ts", "updated_at", "ended_ts",
                   "ended_at", "end_reason", "counts_by_kind", "anomalies_total", "anomalies_omitted",
                   "details_omitted", "runbook_url", "headline", "summary"}


def test_payload_follows_the_contract():
    """The webhook body keeps every contract field with its meaning (anomalies with theirs)
    and extends it (times in ms and ISO 8601, sequence, counts, runbook) without renaming."""
    c = Correlator()
    inc, _ = c.add(anomaly("cancel_burst", 0, "BTC-PERP", account="a-1", z=7.5), None)
    body = json.loads(payload(inc, notification="first", sequence=1, runbook_url="https://wiki.example/cb"))
    assert set(body) == CONTRACT_FIELDS | EXTENDED_FIELDS
    assert body["version"] == "1" and body["status"] == "firing" and body["symbols"] == ["BTC-PERP"]
    assert set(body["anomalies"][0]) == {"id", "kind", "symbol", "account", "ts", "score", "severity", "detail"}
    assert body["anomalies"][0]["ts"] == T0
    assert body["started_ts"] == T0 and body["started_at"] == "2024-11-23T22:13:20.000Z" and body["ended_at"] is None
    assert body["counts_by_kind"] == {"cancel_burst": 1} and body["anomalies_total"] == 1
    assert (body["notification"], body["sequence"], body["runbook_url"]) == ("first", 1, "https://wiki.example/cb")
    inc.status = "resolved"
    ended = json.loads(payload(inc))
    assert (ended["status"], ended["end_reason"], ended["ended_ts"]) == ("resolved", "resolved", T0)


def test_a_large_incident_fits_the_payload_cap_keeping_the_most_severe_in_full():
    c = Correlator()
    inc, _ = c.add(anomaly("leverage_jump", 0, "BTC-PERP", account="a-0", blob="x" * 2_000), None)
    for i in range(1, 150):
        c.add(anomaly("leverage_jump", i, "BTC-PERP", account=f"a-{i}", severity="critical" if i == 77 else "warning",
                      blob="x" * 2_000), None)
    body = payload(inc, max_bytes=32 * 1024)
    assert len(body) <= 32 * 1024
    d = json.loads(body)
    assert d["anomalies_total"] == 150 and d["details_omitted"] > 0
    assert len(d["anomalies"]) + d["anomalies_omitted"] == 150
    assert any(a["account"] == "a-77" and a["detail"] for a in d["anomalies"])  # the critical one keeps its detail


def test_signature_verifies_and_secret_stays_out_of_errors():
    """The signature is HMAC-SHA256 over '<t>.' + body; errors never carry the URL."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503)

    n = WebhookNotifier("hook", "http://127.0.0.1:9/secret-path?token=abc", "s3cret", 5.0,
                        client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    result = asyncio.run(n.send(b'{"x":1}'))
    assert result.outcome == "retryable" and "secret-path" not in result.error and "abc" not in result.error
    sig = seen[0].headers["X-Perpwatch-Signature"]
    t = int(sig.split(",")[0][2:])
    expected = hmac.new(b"s3cret", f"{t}.".encode() + b'{"x":1}', hashlib.sha256).hexdigest()
    assert sig == f"t={t},v1={expected}" == sign(b"s3cret", b'{"x":1}', t)


def test_slack_blocks_are_valid_block_kit():
    """Slack messages parse as Block Kit blocks (slack_sdk's own models)."""
    c = Correlator()
    c.add(anomaly("thin_book_cluster", 0, "BTC-PERP", ratio=3.2, distance_bps=80.0), None)
    inc, _ = c.add(anomaly("cancel_burst", 1_000, "BTC-PERP", account="a-1", z_cancel=9.1), None)
    msg = blocks(msgspec.json.decode(payload(inc)))
    parsed = [Block.parse(b) for b in msg["attachments"][0]["blocks"]]
    assert all(p is not None for p in parsed)
    for p in parsed:
        p.validate_json()
    assert "cascade_risk" in msg["text"] and msg["attachments"][0]["color"] == "#D00000"


def test_silences_match_and_mute_only_fully_covered_incidents(tmp_path):
    """A silence mutes an incident only when it covers every anomaly; expiry ends it."""
    from alerts.silence import SilenceTable, muted

    table = SilenceTable(tmp_path / "pw.db")
    s = table.add(symbol="DOGE-*", kind="cancel_burst", account=None, seconds=3600, comment="mm test", now=1000.0)
    silences = table.all(now=1001.0)
    doge = anomaly("cancel_burst", 0, "DOGE-PERP")
    assert muted([doge], silences, 1001.0)
    assert not muted([doge, anomaly("feed_gap", 0, "DOGE-PERP")], silences, 1001.0)
    assert not muted([anomaly("cancel_burst", 0, "BTC-PERP")], silences, 1001.0)
    assert not muted([doge], silences, 5000.0)  # past its end
    assert table.expire(s.id, now=1002.0) and table.all(now=1003.0) == []


def test_resolved_and_merged_incidents_are_handed_over_once(tmp_path):
    """Quiet incidents resolve on event time and merged ones close as merged; the store
    gets their final status, once."""
    from alerts.incidents import IncidentTable

    c = Correlator(window_ms=600_000, resolve_after_ms=60_000)
    btc, _ = c.add(anomaly("cancel_burst", 0, "BTC"), None)
    eth, _ = c.add(anomaly("cancel_burst", 1_000, "ETH", account="a-1"), None)
    both, _ = c.add(anomaly("leverage_jump", 2_000, "BTC", account="a-1"), None)  # bridges the two
    assert both is btc and eth.status == "merged" and c.take_closed() == [eth]
    c.resolve(T0 + 30_000)
    assert c.take_closed() == []
    c.resolve(T0 + 63_000)
    assert [i.id for i in c.take_closed()] == [btc.id] and btc.status == "resolved" and c.open == {}
    table = IncidentTable(tmp_path / "pw.db")
    table.upsert([btc, eth])
    assert {r["id"]: r["status"] for r in table.list()} == {btc.id: "resolved", eth.id: "merged"}


def test_an_incident_keeps_bounded_accounts_and_timeline():
    """A long incident keeps the latest accounts and anomalies, the opening of its timeline
    and its latest entries, and says how many it elided."""
    from alerts.correlate import MAX_ACCOUNTS, MAX_ANOMALIES, TIMELINE_HEAD, TIMELINE_MAX

    c = Correlator()
    n = MAX_ACCOUNTS + 700
    for k in range(n):
        inc, _ = c.add(anomaly("leverage_jump", k, "BTC", account=f"a-{k}"), None)
    assert len(inc.accounts) == MAX_ACCOUNTS and f"a-{n - 1}" in inc.accounts and "a-0" not in inc.accounts
    assert len(inc.anomalies) == MAX_ANOMALIES and inc.anomalies[-1].account == f"a-{n - 1}"
    view = inc.timeline_view()
    assert len(view) == TIMELINE_MAX + 1 and view[0]["reason"] == "opened"
    assert view[TIMELINE_HEAD]["reason"] == f"{n - TIMELINE_MAX} entries elided"
    assert view[-1]["account"] == f"a-{n - 1}"


def test_a_merge_keeps_one_cascade_risk():
    """An escalated incident merged into an older one by a bridging anomaly: no second cascade_risk."""
    c = Correlator()
    older, _ = c.add(anomaly("thin_book_cluster", 0, "ETH", account="a-1"), None)
    c.add(anomaly("thin_book_cluster", 1_000, "BTC"), None)
    _, first = c.add(anomaly("cancel_burst", 2_000, "BTC"), None)
    merged, again = c.add(anomaly("leverage_jump", 3_000, "BTC", account="a-1"), None)
    assert merged is older and [a.kind for a in first] == ["cascade_risk"] and again == []
    assert sum(a.kind == "cascade_risk" for a in merged.anomalies) == 1
