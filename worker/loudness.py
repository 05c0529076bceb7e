"""Loudness normalisation (``output.loudness``): the targets, and the gain a measurement calls for. Pure.

Two passes. The kept audio (after the cut, as the render will encode it) is measured by ffmpeg's BS.1770
meter (``render/loudness.py``); :func:`decide` turns that into one linear gain, and, only where the gain
would push the true peak over the ceiling, a true-peak limiter. The gain goes into the render's graph
(:func:`filters`) so every sample of the output gets the same gain: a chunked render measures once, over all
its kept audio, because its audio is rendered whole once.

Why our own gain and limiter rather than ffmpeg's ``loudnorm`` in linear mode: that filter leaves linear mode
for its dynamic (AGC) mode whenever the gain would exceed the true-peak target, and resamples to 192 kHz on
the way; here the gain is always linear, and the limiter (``alimiter`` at 4x the sample rate, so it sees
the peaks between samples, with its look-ahead delay compensated) only touches the peaks above the ceiling.
The result says which was used: ``linear``, ``limited`` or ``unchanged``.

Never noise amplified to the target: kept audio whose integrated loudness is below the BS.1770 absolute gate
(-70 LUFS: silence), or below :data:`NOISE_FLOOR_LUFS` (a room's hum with no speech above it), is left as it
is, with a note.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

#: BS.1770's absolute gate: integrated loudness below this is silence.
ABSOLUTE_GATE_LUFS = -70.0
#: Kept audio quieter than this is taken for noise with no speech above it (speech recorded even far from a
#: laptop's microphone measures -45 LUFS or louder): it is not raised to a target.
NOISE_FLOOR_LUFS = -50.0
#: Room left below the true-peak ceiling for the lossy encoders, whose decoded peaks overshoot the samples they
#: were given (AAC and MP3 by up to about 1 dB on speech at the bitrates the tiers allow).
ENCODER_HEADROOM_DB = 1.0
#: The limiter's attack and release (ms): fast enough for plosives, slow enough not to distort speech.
LIMITER_ATTACK_MS = 1.0
LIMITER_RELEASE_MS = 60.0
#: The limiter runs at this multiple of the sample rate, so it sees the peaks between samples (BS.1770's
#: true peak is measured at 4x too).
OVERSAMPLE = 4


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    integrated: float  # LUFS
    true_peak: float  # dBTP, the ceiling


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("podcast", -16.0, -1.0),  # podcast hosts, Apple
        Target("streaming", -14.0, -1.0),  # most streaming platforms
        Target("broadcast", -23.0, -1.0),  # EBU R128
    )
}


@dataclasses.dataclass(frozen=True)
class Measurement:
    """BS.1770 figures of a stretch of audio: integrated loudness (LUFS, -inf when silent), loudness range (LU)
    and true peak (dBTP, -inf when silent)."""

    integrated: float
    lra: float
    true_peak: float

    def to_dict(self) -> dict[str, float | None]:
        return {k: (round(v, 2) if math.isfinite(v) else None) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class Gain:
    """What a render does to its audio's level."""

    target: Target
    mode: str  # "linear", "limited" (linear gain, and the limiter holds the peaks) or "unchanged"
    gain_db: float
    limit_dbtp: float | None  # the limiter's ceiling (at 4x oversampling), when it runs
    measured: Measurement  # the kept audio, before
    note: str | None = None

    def to_dict(self, output: Measurement | None = None) -> dict[str, Any]:
        return {
            "target": self.target.name,
            "target_i": self.target.integrated,
            "target_tp": self.target.true_peak,
            "mode": self.mode,
            "gain_db": round(self.gain_db, 2),
            "input": self.measured.to_dict(),
            "output": output.to_dict() if output is not None else None,
            "note": self.note,
        }


def decide(target: Target, measured: Measurement, *, correction_db: float = 0.0) -> Gain:
    """The gain that takes ``measured`` to ``target``; ``correction_db`` adds what a limiter took off (the
    second measurement, with the limiter in place, says how much)."""
    # ffmpeg's meter reports silence as the gate itself (-70.0), not -inf.
    if not math.isfinite(measured.integrated) or measured.integrated <= ABSOLUTE_GATE_LUFS:
        return Gain(target, "unchanged", 0.0, None, measured, "the kept audio is silent: left as it is")
    if measured.integrated < NOISE_FLOOR_LUFS:
        return Gain(
            target,
            "unchanged",
            0.0,
            None,
            measured,
            f"the kept audio measures {measured.integrated:.1f} LUFS, below {NOISE_FLOOR_LUFS:g}: taken for noise "
            "with no speech, and not raised",
        )
    gain = target.integrated - measured.integrated + correction_db
    ceiling = target.true_peak - ENCODER_HEADROOM_DB
    if not math.isfinite(measured.true_peak) or measured.true_peak + gain <= ceiling:
        return Gain(target, "linear", gain, None, measured)
    return Gain(target, "limited", gain, ceiling, measured)


def filters(gain: Gain, sample_rate: int) -> list[str]:
    """The filters that apply ``gain`` to audio at ``sample_rate`` (appended to the render's audio chain)."""
    if gain.mode == "unchanged":
        return []
    out = [f"volume={gain.gain_db:.3f}dB:precision=double"]
    if gain.limit_dbtp is not None:
        limit = 10 ** (gain.limit_dbtp / 20)
        out += [
            f"aresample={sample_rate * OVERSAMPLE}",
            f"alimiter=limit={limit:.6f}:attack={LIMITER_ATTACK_MS:g}:release={LIMITER_RELEASE_MS:g}"
            ":level=false:latency=true",
            f"aresample={sample_rate}",
        ]
    return out
