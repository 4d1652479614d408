"""Latency tables measured on the target device, and whole-network latency prediction.

* :func:`profile` measures a :class:`LatencyTable` for a model (resumable, calibrated end to end);
  :func:`recalibrate` re-takes only its end-to-end calibration when the machine's speed has changed.
* :func:`predict_latency` / :func:`predict_from_widths` predict a network's latency from a table.
* :func:`measure_latency` / :func:`measure_many` measure real end-to-end latency.
"""

from __future__ import annotations

from halp.latency.backends import BACKENDS, Backend, get_backend
from halp.latency.measure import measure_latency, measure_many
from halp.latency.predict import latency_breakdown, predict_from_widths, predict_latency
from halp.latency.profile import ProfileSettings, profile, recalibrate
from halp.latency.table import Calibration, LatencyTable, LayerEntry, OpModel
from halp.latency.timing import LatencyStats, TimingSettings

__all__ = [
    "BACKENDS",
    "Backend",
    "Calibration",
    "LatencyStats",
    "LatencyTable",
    "LayerEntry",
    "OpModel",
    "ProfileSettings",
    "TimingSettings",
    "get_backend",
    "latency_breakdown",
    "measure_latency",
    "measure_many",
    "predict_from_widths",
    "predict_latency",
    "profile",
    "recalibrate",
]
