"""Compatibility alias: the telemetry moved to :mod:`worker.telemetry`; import from there."""

from worker.telemetry import *  # noqa: F403
from worker.telemetry import __all__  # noqa: F401
