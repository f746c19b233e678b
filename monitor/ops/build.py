"""What this build is: the installed package version and the Python running it (for
``perpwatch --version`` and the ``perpwatch_build_info`` metric)."""

from __future__ import annotations

import platform
from functools import cache
from importlib.metadata import PackageNotFoundError, version


@cache
def build_info() -> dict[str, str]:
    """The version and the Python, as labels.

    >>> sorted(build_info())
    ['python', 'version']
    """
    try:
        v = version("perpwatch")
    except PackageNotFoundError:  # run from a source tree that was never installed
        v = "0+unknown"
    return {"version": v, "python": platform.python_version()}
