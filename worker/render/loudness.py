"""The measuring passes of loudness normalisation (worker/loudness.py decides; this runs ffmpeg's meter).

Each pass reads only the source's audio (the graph names no video stream, so ffmpeg decodes none): the
render's own audio graph, so what is measured is the kept audio exactly as it will be encoded (cut, faded,
downmixed, resampled), then ffmpeg's BS.1770 meter (``ebur128``: integrated loudness and range) and a 4x
oversampled peak (``astats`` at four times the rate: the true peak). The figures are written by
``ametadata`` to a file in the render's scratch directory, never parsed out of ffmpeg's log.

Where the gain needs the limiter, the pass runs again with the gain and the limiter in place: the limiter
takes a little off the integrated loudness, which the final gain adds back (:data:`MAX_PASSES` at most). The
last pass's figures are the output's, as reported.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from pathlib import Path

from worker import ffmpeg, loudness
from worker.errors import EncodeError
from worker.graph import build_graph, measure_ffmpeg_args
from worker.planner import Plan

#: Measuring passes at most: the source, then (only where the limiter runs) with the gain and limiter in place.
MAX_PASSES = 4
#: The output is left alone once this close to the target (LU).
TOLERANCE_LU = 0.1
#: A path ffmpeg's filter-graph syntax carries without escaping (the scratch directory's, by construction).
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_./-]+")


def _graph(plan: Plan, gain: loudness.Gain | None, figures: Path) -> str:
    if not _PLAIN_PATH.fullmatch(str(figures)):
        raise EncodeError("the loudness figures file has a path ffmpeg's graph syntax would need escaped")
    sr = plan.encode.sample_rate
    chain = [*(loudness.filters(gain, sr) if gain is not None else []), "ebur128=peak=none:metadata=1:framelog=quiet"]
    chain += [
        f"aresample={sr * loudness.OVERSAMPLE}",
        "astats=metadata=1:measure_perchannel=none:measure_overall=Peak_level",
        f"ametadata=mode=print:file={figures}",
    ]
    graph = build_graph(plan.info, plan.timeline, plan.preset, plan.encode, audio_only=True)
    return graph.replace("[aout]", "[kept]") + ";\n[kept]" + ",".join(chain) + "[aout]\n"


def _figures(path: Path) -> loudness.Measurement:
    """The last frame's figures: ``ebur128``'s and ``astats``' values are running totals over the whole pass."""
    last: dict[str, float] = {}
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                key, sep, value = line.strip().partition("=")
                if sep and key.startswith("lavfi."):
                    try:
                        last[key] = float(value)
                    except ValueError:
                        last[key] = float("-inf")
    except OSError as exc:
        raise EncodeError(f"the loudness measurement wrote no figures ({exc.strerror})") from exc
    if "lavfi.r128.I" not in last:
        return loudness.Measurement(float("-inf"), 0.0, float("-inf"))  # no audio frame at all: silence
    return loudness.Measurement(
        last["lavfi.r128.I"], last.get("lavfi.r128.LRA", 0.0), last.get("lavfi.astats.Overall.Peak_level", 0.0)
    )


def measure(
    plan: Plan,
    work: Path,
    gain: loudness.Gain | None = None,
    *,
    ffmpeg_bin: str | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
) -> loudness.Measurement:
    """One pass over the kept audio (with ``gain`` applied, when given)."""
    figures = work / "loudness.txt"
    graph_file = work / "loudness-graph.txt"
    figures.unlink(missing_ok=True)
    graph_file.write_text(_graph(plan, gain, figures), encoding="utf-8")
    try:
        ffmpeg.run(
            measure_ffmpeg_args(plan.info, str(graph_file), max_pixels=plan.limits.max_source_pixels),
            ffmpeg=ffmpeg_bin,
            expected_duration_s=plan.timeline.duration,
            cancel=cancel,
            deadline=deadline,
            decoders=(plan.info.audio.codec,) if plan.info.audio is not None else (),
        )
        return _figures(figures)
    finally:
        figures.unlink(missing_ok=True)
        graph_file.unlink(missing_ok=True)


def normalise(
    plan: Plan,
    work: Path,
    *,
    ffmpeg_bin: str | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
) -> Plan:
    """``plan`` with its loudness gain decided and measured (unchanged when no loudness was asked or it is
    decided already: a chunked render's audio is measured once)."""
    name = plan.spec.loudness
    if name is None or plan.loudness is not None:
        return plan
    target = loudness.TARGETS[name]
    if plan.info.audio is None:  # a video with no sound: the output's silent track stays silent
        nothing = loudness.Measurement(float("-inf"), 0.0, float("-inf"))
        note = "the source has no audio: the output's silence is left as it is"
        return dataclasses.replace(plan, loudness=loudness.Gain(target, "unchanged", 0.0, None, nothing, note))
    source = measure(plan, work, ffmpeg_bin=ffmpeg_bin, cancel=cancel, deadline=deadline)
    gain = loudness.decide(target, source)
    output = source
    passes = 1
    if gain.mode != "unchanged":
        output = measure(plan, work, gain, ffmpeg_bin=ffmpeg_bin, cancel=cancel, deadline=deadline)
        passes += 1
    correction = 0.0
    while gain.mode == "limited" and passes < MAX_PASSES and abs(target.integrated - output.integrated) > TOLERANCE_LU:
        # The limiter took some loudness off with the peaks: add it back to the gain (the limiter then takes a
        # little more, which the next pass measures).
        correction += target.integrated - output.integrated
        gain = loudness.decide(target, source, correction_db=correction)
        output = measure(plan, work, gain, ffmpeg_bin=ffmpeg_bin, cancel=cancel, deadline=deadline)
        passes += 1
    return dataclasses.replace(plan, loudness=gain, loudness_output=output)
