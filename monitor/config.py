"""The TOML configuration, decoded into typed structs (CONTRACT section 2).

Every mistake is refused at start with the dotted key that is wrong:

>>> try:
...     parse('[store]\\npath = "x.db"\\n[[alerts.routes]]\\nreceiver = "nobody"')
... except ConfigError as e:
...     print(e)
alerts.routes[0].receiver: no receiver named 'nobody' (have: none)

Secrets (webhook URLs, HMAC keys) may be given as ``*_env`` (an environment variable's
name) or ``*_file`` (a path, e.g. a systemd credential); they are resolved once at
start and never logged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import msgspec

from monitor.events import SEVERITY_RANK, Severity


class ConfigError(ValueError):
    """A configuration problem; ``key`` is the dotted path of the offending key.

    ``errors`` lists every problem found (this one first), so a user fixes a file in one
    pass: ``parse`` reports them all at once.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message
        self.errors: list[ConfigError] = [self]

    @classmethod
    def of(cls, errors: list[ConfigError]) -> ConfigError:
        """One exception carrying several problems (its key and message are the first's)."""
        first = errors[0]
        e = cls(first.key, first.message)
        e.errors = list(errors)
        if len(errors) > 1:
            e.args = ("\n".join(str(x) for x in errors),)
        return e


_DUR = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class Duration:
    """A span like ``250ms``, ``5s``, ``10m``, ``2h``, ``1d`` or ``1h30m``.

    >>> Duration.parse("1h30m").seconds, Duration.parse("250ms").ms
    (5400.0, 250)
    """

    __slots__ = ("text", "seconds")

    def __init__(self, text: str, seconds: float) -> None:
        self.text = text
        self.seconds = seconds

    @classmethod
    def parse(cls, text: str) -> Duration:
        if not isinstance(text, str):
            raise ValueError(f"expected a duration string like '5s', got {text!r}")
        s = text.strip()
        parts = _DUR.findall(s)
        if not s or "".join(n + u for n, u in parts) != s:
            raise ValueError(f"invalid duration {text!r} (use e.g. 250ms, 5s, 10m, 2h, 1d)")
        return cls(text, sum(float(n) * _UNIT[u] for n, u in parts))

    @property
    def ms(self) -> int:
        return int(round(self.seconds * 1000))

    def __repr__(self) -> str:
        return f"Duration({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Duration) and other.seconds == self.seconds

    def __hash__(self) -> int:
        return hash(self.seconds)


def _d(text: str) -> Any:
    return msgspec.field(default_factory=lambda: Duration.parse(text))


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


Format = Literal["perpwatch", "binance-usdm", "bybit-v5"]


class SourceConfig(_Section):
    name: str
    url: str = ""  # required for "perpwatch"; public venues default to their production endpoint
    format: Format = "perpwatch"
    symbols: list[str] = []  # public venues: what to subscribe to
    rest_url: str | None = None  # public venues: REST base for book snapshots
    max_frame_bytes: int = 8 * 1024 * 1024
    ping_interval: Duration = _d("20s")
    ping_timeout: Duration = _d("20s")
    reconnect_max: Duration = _d("30s")  # cap of the exponential reconnect backoff
    stale_after: Duration = _d("30s")  # no frame for this long (wall time) => feed_stale; the source reconnects
    unsynced_after: Duration = _d("30s")  # a book out of sync this long (event time) => coverage book_not_synced
    silent_after: Duration = _d("60s")  # a continuous stream silent this long (event time) => coverage stream_silent


class StoreConfig(_Section):
    path: str
    retention: Duration = _d("30d")  # anomalies older than this are purged
    delivered_retention: Duration = _d("7d")  # sent notifications kept this long
    max_held: int = 100_000  # anomalies held in memory while the store refuses writes; then spilled to a file


class DaemonConfig(_Section):
    tick: Duration = _d("250ms")  # event-time cadence of detector scoring
    queue_frames: int = 1024  # frames buffered between sources and the pipeline
    max_symbols: int = 5_000  # a feed inventing symbols beyond this is refused, counted
    max_accounts: int = 2_000_000  # LRU bound of per-account state
    state_dir: str | None = None  # checkpoints; default: beside the store
    checkpoint_interval: Duration = _d("5m")
    drain_timeout: Duration = _d("8s")  # SIGTERM: time to process, flush and deliver
    max_ahead: Duration = _d("5m")  # events stamped further ahead of event time (or, live, of wall time) are refused
    stall_after: Duration = _d("2s")  # live: no event for this long (wall) => ticks advance with wall time


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"  # auto: JSON unless stdout is a TTY


class MetricsConfig(_Section):
    enabled: bool = True
    listen: str = "127.0.0.1:9464"


ReceiverKind = Literal["webhook", "slack", "log", "alertmanager", "pagerduty"]


class ReceiverConfig(_Section):
    name: str
    kind: ReceiverKind = "webhook"
    url: str | None = None
    url_env: str | None = None
    url_file: str | None = None
    secret_env: str | None = None
    secret_file: str | None = None
    timeout: Duration = _d("5s")
    max_per_second: float | None = None  # default: 1/s for slack, unlimited for webhooks
    send_resolved: bool = True  # tell the receiver when an incident ends


class RouteConfig(_Section):
    receiver: str
    min_severity: Severity = "info"
    kinds: list[str] = []  # empty: every kind
    symbols: list[str] = []  # globs, e.g. "BTC-*"; empty: every symbol
    group_wait: Duration = _d("0s")
    group_interval: Duration = _d("5s")  # early warning: an incident's updates go out within seconds
    repeat_interval: Duration = _d("4h")
    continue_: bool = msgspec.field(default=False, name="continue")
    runbook_url: str | None = None  # carried in this route's notifications (what to look at)


class ExposureConfig(_Section):
    """The exposure graph's edges (monitor/state/exposure.py); all on event time."""

    return_interval: Duration = _d("5s")  # marks sampled this far apart for returns
    corr_halflife: Duration = _d("15m")  # EW half-life of the return correlation
    min_return_corr: float = 0.6  # |rho| at or above this links two symbols
    corr_min_samples: int = 60  # returns in common before a correlation counts
    max_corr_symbols: int = 256  # symbols in the correlation matrix (first come; idle ones give way)
    min_collateral_share: float = 0.2  # shared cross notional / the smaller symbol's cross notional
    forced_flow_window: Duration = _d("60s")  # a liquidation this soon after another symbol's chains them
    forced_flow_halflife: Duration = _d("30m")  # decay of the chain counts
    min_forced_flow: float = 3.0  # decayed chain count that links two symbols
    max_edges: int = 200_000  # collateral and forced-flow edges each; past it the weakest tenth goes

    def graph_params(self) -> dict[str, Any]:
        """ExposureGraph.configure's arguments."""
        return dict(return_interval_ms=self.return_interval.ms, corr_halflife_ms=self.corr_halflife.ms,
                    min_return_corr=self.min_return_corr, corr_min_samples=self.corr_min_samples,
                    min_collateral_share=self.min_collateral_share,
                    forced_flow_window_ms=self.forced_flow_window.ms,
                    forced_flow_halflife_ms=self.forced_flow_halflife.ms, min_forced_flow=self.min_forced_flow,
                    max_edges=self.max_edges)


class AlertsConfig(_Section):
    receivers: list[ReceiverConfig] = []
    routes: list[RouteConfig] = []
    incident_window: Duration = _d("10m")  # anomalies this close in event time may join
    resolve_after: Duration = _d("15m")  # an incident quiet this long resolves
    link_window: Duration = _d("2m")  # a link joins only an incident this recently on the linked symbol
    min_account_share: float = 0.01  # an account links a symbol when it holds this much of its cross notional
    max_incident_span: Duration = _d("1h")  # an incident older than this takes no new anomaly: a new story opens
    exposure: ExposureConfig = msgspec.field(default_factory=ExposureConfig)


class Config(_Section):
    store: StoreConfig
    sources: list[SourceConfig] = []
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)
    detectors: dict[str, dict[str, Any]] = {}


def _dec_hook(t: type, obj: Any) -> Any:
    if t is Duration:
        return Duration.parse(obj)
    raise NotImplementedError(t)


def error_path(msgspec_error: str) -> tuple[str, str]:
    """msgspec's "Object contains unknown field `x` - at `$.a[0]`" -> ("a[0].x", "unknown key")."""
    msg, sep, at = msgspec_error.rpartition(" - at `")
    if not sep:
        msg, at = msgspec_error, ""
    key = at.rstrip("`").removeprefix("$").removeprefix(".")
    for prefix, text in (("Object contains unknown field `", "unknown key"),
                         ("Object missing required field `", "required key is missing")):
        if msg.startswith(prefix):
            field = msg.split("`")[1]
            return (f"{key}.{field}" if key else field), text
    return key, msg


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def allowed_values(tp: Any) -> tuple | None:
    """The values a ``Literal`` (or an optional one) allows; None for other types."""
    if get_origin(tp) is Literal:
        return get_args(tp)
    for arg in get_args(tp) if get_origin(tp) in (Union, UnionType) else ():
        if get_origin(arg) is Literal:
            return get_args(arg)
    return None


def structure_errors(raw: Any, cls: type, key: str = "") -> list[ConfigError]:
    """Every unknown key, missing key and wrong value of a decoded TOML table against the
    struct ``cls`` (msgspec itself stops at the first), enum errors with the allowed values.

    >>> for e in structure_errors({"store": {}, "logging": {"level": "loud"}, "x": 1}, Config):
    ...     print(e)
    x: unknown key
    store.path: required key is missing
    logging.level: invalid value 'loud' (allowed: debug, info, warning, error)
    """
    if not isinstance(raw, dict):
        return [ConfigError(key, f"expected a table, got {type(raw).__name__}")]
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    errs = [ConfigError(_join(key, k), "unknown key") for k in raw if k not in fields]
    for name, f in fields.items():
        if name not in raw:
            if f.required:
                errs.append(ConfigError(_join(key, name), "required key is missing"))
            continue
        errs += _value_errors(raw[name], f.type, _join(key, name))
    return errs


def _value_errors(value: Any, tp: Any, key: str) -> list[ConfigError]:
    if _is_struct(tp):
        return structure_errors(value, tp, key)
    args = get_args(tp)
    if get_origin(tp) is list and args and _is_struct(args[0]):
        if not isinstance(value, list):
            return [ConfigError(key, f"expected an array of tables, got {type(value).__name__}")]
        return [e for i, item in enumerate(value) for e in structure_errors(item, args[0], f"{key}[{i}]")]
    try:
        msgspec.convert(value, tp, dec_hook=_dec_hook)
    except msgspec.ValidationError as e:
        allowed = allowed_values(tp)
        if allowed is not None and isinstance(value, str):
            return [ConfigError(key, f"invalid value {value!r} (allowed: {', '.join(map(str, allowed))})")]
        where, msg = error_path(str(e))
        return [ConfigError(key + (f".{where}" if where and not where.startswith("[") else where), msg)]
    return []


def parse(text: str | bytes, source: str = "<config>") -> Config:
    """Decode and validate a config document; raises ConfigError naming the key (its
    ``errors``: every problem in the document)."""
    try:
        raw = msgspec.toml.decode(text)
    except msgspec.DecodeError as e:
        raise ConfigError("", f"{source}: not valid TOML: {e}") from None
    errs = structure_errors(raw, Config)
    if errs:
        raise ConfigError.of(errs)
    try:
        cfg = msgspec.convert(raw, Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as e:  # a rule the walker does not know: msgspec's first error
        key, msg = error_path(str(e))
        raise ConfigError(key, msg) from None
    errs = problems(cfg)
    if errs:
        raise ConfigError.of(errs)
    return cfg


def load(path: str | os.PathLike) -> Config:
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as e:
        raise ConfigError("", f"cannot read config file {str(p)!r}: {e.strerror}") from None
    return parse(text, str(p))


def _check_url(key: str, url: str, schemes: tuple[str, ...], secret: bool = False) -> None:
    """``secret``: the URL came from an env var or a file (a Slack URL is a credential), so an
    error names the key and the expected shape but never prints the value."""
    try:
        u = urlsplit(url)
        ok = u.scheme in schemes and bool(u.hostname)
        _ = u.port  # raises on a bad port
    except ValueError:
        ok = False
    if not ok:
        shown = "(value not shown: it is a secret)" if secret else repr(url)
        raise ConfigError(key, f"invalid URL {shown} (expected {' or '.join(s + '://host...' for s in schemes)})")


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(key, f"must be > 0, got {value}")


def validate(cfg: Config) -> None:
    """Cross-field rules msgspec cannot express; raises ConfigError carrying all of them."""
    errs = problems(cfg)
    if errs:
        raise ConfigError.of(errs)


def problems(cfg: Config) -> list[ConfigError]:
    """Every cross-field and range problem of a decoded config (none: an empty list)."""
    errs: list[ConfigError] = []

    def check(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except ConfigError as e:
            errs.append(e)

    def fail(key: str, message: str) -> None:
        errs.append(ConfigError(key, message))

    def within(key: str, value: float, low: float, high: float) -> None:
        if not low < value <= high:
            fail(key, f"must be within ({low:g}, {high:g}], got {value}")

    seen: set[str] = set()
    for i, s in enumerate(cfg.sources):
        k = f"sources[{i}]"
        if s.name in seen:
            fail(f"{k}.name", f"duplicate source name {s.name!r}")
        seen.add(s.name)
        if s.url or s.format == "perpwatch":
            check(_check_url, f"{k}.url", s.url, ("ws", "wss"))
        if s.rest_url is not None:
            check(_check_url, f"{k}.rest_url", s.rest_url, ("http", "https"))
        if s.format != "perpwatch" and not s.symbols:
            fail(f"{k}.symbols", f"format {s.format!r} needs the symbols to subscribe to")
        if s.format == "binance-usdm" and len(s.symbols) * 4 > 1024:
            fail(f"{k}.symbols", "Binance allows 1024 streams per connection (4 per symbol): "
                 "split the symbols over several sources")
        check(_positive, f"{k}.max_frame_bytes", s.max_frame_bytes)
        for name in ("reconnect_max", "ping_interval", "ping_timeout", "stale_after"):
            check(_positive, f"{k}.{name}", getattr(s, name).seconds)
    if not cfg.store.path.strip():
        fail("store.path", "must not be empty")
    check(_positive, "store.max_held", cfg.store.max_held)
    for name in ("retention", "delivered_retention"):
        check(_positive, f"store.{name}", getattr(cfg.store, name).seconds)
    d = cfg.daemon
    for name in ("tick", "max_ahead", "stall_after", "checkpoint_interval"):
        check(_positive, f"daemon.{name}", getattr(d, name).ms)
    for name in ("queue_frames", "max_symbols", "max_accounts"):
        check(_positive, f"daemon.{name}", getattr(d, name))
    if not 0 < d.drain_timeout.seconds <= 10:
        fail("daemon.drain_timeout", "must be within (0s, 10s]: SIGTERM must finish in 10 s")
    if cfg.metrics.enabled:
        check(_listen, cfg.metrics.listen)
    names: set[str] = set()
    for i, r in enumerate(cfg.alerts.receivers):
        k = f"alerts.receivers[{i}]"
        if r.name in names:
            fail(f"{k}.name", f"duplicate receiver name {r.name!r}")
        names.add(r.name)
        check(_positive, f"{k}.timeout", r.timeout.seconds)
        if r.max_per_second is not None:
            check(_positive, f"{k}.max_per_second", r.max_per_second)
        given = [f for f in ("url", "url_env", "url_file") if getattr(r, f) is not None]
        if r.kind == "log":
            continue
        if len(given) != 1:
            fail(f"{k}.url", "set exactly one of url, url_env, url_file")
        if r.url is not None:
            check(_check_url, f"{k}.url", r.url, ("http", "https"))
        if r.secret_env is not None and r.secret_file is not None:
            fail(f"{k}.secret_env", "set at most one of secret_env, secret_file")
        if r.kind == "pagerduty" and r.secret_env is None and r.secret_file is None:
            fail(f"{k}.secret_env", "a pagerduty receiver needs its routing key: set secret_env or secret_file")
    a = cfg.alerts
    for name in ("link_window", "resolve_after", "max_incident_span"):  # incident_window 0s: no joins
        check(_positive, f"alerts.{name}", getattr(a, name).ms)
    within("alerts.min_account_share", a.min_account_share, 0, 1)
    x = a.exposure
    for name in ("return_interval", "corr_halflife", "forced_flow_window", "forced_flow_halflife"):
        check(_positive, f"alerts.exposure.{name}", getattr(x, name).ms)
    for name in ("corr_min_samples", "max_corr_symbols", "max_edges", "min_forced_flow"):
        check(_positive, f"alerts.exposure.{name}", getattr(x, name))
    for name in ("min_return_corr", "min_collateral_share"):
        within(f"alerts.exposure.{name}", getattr(x, name), 0, 1)
    for i, rt in enumerate(a.routes):
        if rt.receiver not in names:
            have = ", ".join(sorted(names)) or "none"
            fail(f"alerts.routes[{i}].receiver", f"no receiver named {rt.receiver!r} (have: {have})")
        for f in ("group_interval", "repeat_interval"):
            check(_positive, f"alerts.routes[{i}].{f}", getattr(rt, f).seconds)
    return errs


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError("metrics.listen", f"expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


def listen_address(cfg: Config) -> tuple[str, int]:
    return _listen(cfg.metrics.listen)


def resolve_secret(key: str, env: str | None, file: str | None) -> str | None:
    """Read a secret from an env var or a file; ConfigError if named but unavailable."""
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(key + "_env", f"environment variable {env} is not set")
        return value
    if file is not None:
        try:
            return Path(file).read_text().strip()
        except OSError as e:
            raise ConfigError(key + "_file", f"cannot read {file!r}: {e.strerror}") from None
    return None


def receiver_url(r: ReceiverConfig, index: int) -> str | None:
    k = f"alerts.receivers[{index}].url"
    url = r.url if r.url is not None else resolve_secret(k, r.url_env, r.url_file)
    if url is not None and r.url is None:
        _check_url(k, url, ("http", "https"), secret=True)
    return url


def severity_at_least(sev: str, floor: str) -> bool:
    return SEVERITY_RANK[sev] >= SEVERITY_RANK[floor]
