"""The event-time clock."""

from hypothesis import given
from hypothesis import strategies as st

from monitor.state.clock import EventClock


@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=200))
def test_ticks_are_increasing_aligned_and_never_ahead_of_events(steps):
    """Ticks are strictly increasing multiples of tick_ms, never later than the event seen."""
    c = EventClock(tick_ms=250, max_catchup=8)
    ts, last = 1_000_000, None
    for s in steps:
        ts += s
        for t in c.advance(ts):
            assert t % 250 == 0 and t <= ts
            assert last is None or t > last
            last = t


def test_quiet_stretch_is_not_filled_tick_by_tick():
    """A long silence costs at most max_catchup ticks; the rest are counted as skipped."""
    c = EventClock(tick_ms=250, max_catchup=4)
    c.advance(1_000)
    ticks = c.advance(1_000 + 3_600_000)
    assert len(ticks) == 4 and ticks[-1] == 3_601_000
    assert c.skipped == 14_400 - 4


def test_late_events_do_not_move_time_back():
    """An older event (a lagging source) neither ticks nor rewinds the clock."""
    c = EventClock(tick_ms=100)
    c.advance(1_000)
    c.advance(1_250)
    assert c.advance(900) == [] and c.now == 1_250
