"""The shared detector checks (detectors/checks.py) over every registered detector and parameter set."""

import json
import os
import subprocess
import sys
from functools import lru_cache

import pytest

from detectors import REGISTRY, build_detectors
from detectors.checks import CHECKS, maker, params_for, run, synthetic_stream
from monitor.pipeline import Pipeline
from monitor.state import MarketState
from tests.support import ROOT, TIMEOUT

CASES = [(name, i, params) for name, cls in REGISTRY.items() for i, params in enumerate(params_for(cls))]


@lru_cache(maxsize=1)
def stream():
    return synthetic_stream()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name,i,params", CASES, ids=[f"{n}-{i}" for n, i, _ in CASES])
def test_check(check, name, i, params):
    """Every detector, under every parameter set, passes every shared check."""
    check(maker(REGISTRY[name], params), stream())


def test_the_stream_exercises_the_detectors():
    """The synthetic stream is not vacuous: with short warm-ups each detector but feed_gap's peers fires."""
    kinds = set()
    for name, i, params in CASES:
        kinds |= {a.kind for a in run(maker(REGISTRY[name], params), stream())}
    assert {"feed_gap", "cancel_burst", "leverage_jump", "thin_book_cluster", "mark_divergence",
            "funding_crowding"} <= kinds, kinds


def test_every_detector_declares_its_parameter_sets_or_gets_some():
    """Each registered detector is checked under at least two parameter sets (not only defaults)."""
    for name, cls in REGISTRY.items():
        assert len(params_for(cls)) >= 2 or name == "feed_gap", name


SCRIPT = """
import json, sys
from detectors import build_detectors
from detectors.checks import synthetic_stream
from monitor.pipeline import Pipeline
from monitor.state import MarketState
p = Pipeline(MarketState(), build_detectors({}), tick_ms=250)
found = p.process(synthetic_stream(seconds=30)) + p.flush()
print(json.dumps([[a.id, a.kind, a.ts, a.severity, a.score] for a in found]))
"""


def test_replay_is_identical_across_processes():
    """All detectors on defaults give the same anomalies under two different hash seeds (no set-order leaks)."""
    outs = []
    for seed in ("1", "2"):
        r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT,
                           env={**os.environ, "PYTHONHASHSEED": seed})
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout))
    assert outs[0] == outs[1]
    p = Pipeline(MarketState(), build_detectors({}), tick_ms=250)
    here = p.process(synthetic_stream(seconds=30)) + p.flush()
    assert [[a.id, a.kind, a.ts, a.severity, a.score] for a in here] == outs[0]
