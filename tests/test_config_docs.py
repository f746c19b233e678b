"""The documented default config parses and documents every key there is."""

import re

import msgspec

from detectors import REGISTRY
from monitor import config as C
from tests.support import ROOT, perpwatch

DOC = ROOT / "config" / "perpwatch.toml"


def keys_of(struct: type) -> set[str]:
    return {f.encode_name for f in msgspec.structs.fields(struct)}


def test_documented_config_is_valid():
    """config/perpwatch.toml passes check-config (its secret env var provided)."""
    r = perpwatch("check-config", str(DOC), env={"PERPWATCH_HOOK_SECRET": "x"})
    assert r.returncode == 0, r.stderr


def test_every_key_is_documented():
    """Each config key, detectors included, appears in the documented file."""
    text = DOC.read_text()
    documented = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.M))
    sections = [C.SourceConfig, C.StoreConfig, C.DaemonConfig, C.LoggingConfig, C.MetricsConfig,
                C.ReceiverConfig, C.RouteConfig, C.AlertsConfig, C.ExposureConfig]
    wanted = set().union(*(keys_of(s) for s in sections)) - {"receivers", "routes", "exposure"}
    assert "[alerts.exposure]" in text
    assert wanted <= documented, sorted(wanted - documented)
    for name, cls in REGISTRY.items():
        assert f"[detectors.{name}]" in text, name
        block = text.split(f"[detectors.{name}]", 1)[1].split("\n[", 1)[0]
        missing = {k for k in keys_of(cls.Config) if not re.search(rf"^#?\s*{k}\s*=", block, flags=re.M)}
        assert not missing, (name, sorted(missing))


def test_examples_are_valid():
    """Every example config passes check-config (with its secrets provided)."""
    env = {"PERPWATCH_HOOK_SECRET": "x", "PERPWATCH_SLACK_URL": "https://hooks.slack.example/T/B/X"}
    examples = sorted((ROOT / "config" / "examples").glob("*.toml"))
    assert examples
    for path in examples:
        r = perpwatch("check-config", str(path), env=env)
        assert r.returncode == 0, (path.name, r.stderr)
