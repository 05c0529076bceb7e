"""OpenTimelineIO's native JSON (``.otio``): OTIO's own serialisation of the cut."""

from __future__ import annotations

from worker.exports.cut import Cut


def write(cut: Cut) -> str:
    """OTIO's native JSON: a video track and one audio track per channel, clips on ExternalReferences."""
    import opentimelineio as otio

    rate = float(cut.rate)

    def rt(units: int) -> otio.opentime.RationalTime:
        return otio.opentime.RationalTime(units, rate)

    def track(kind: str, name: str) -> otio.schema.Track:
        t = otio.schema.Track(name=name, kind=kind)
        for clip in cut.clips:
            ref = otio.schema.ExternalReference(
                target_url=cut.source_url,
                available_range=otio.opentime.TimeRange(rt(cut.start_tc), rt(cut.source_units)),
            )
            ref.name = cut.source_name
            t.append(
                otio.schema.Clip(
                    name=cut.source_name,
                    media_reference=ref,
                    source_range=otio.opentime.TimeRange(rt(cut.start_tc + clip.src), rt(clip.length)),
                )
            )
        return t

    timeline = otio.schema.Timeline(name=cut.title, global_start_time=rt(0))
    if cut.video:
        timeline.tracks.append(track(otio.schema.TrackKind.Video, "V1"))
    for ch in range(1, cut.channels + 1):
        timeline.tracks.append(track(otio.schema.TrackKind.Audio, f"A{ch}"))
    timeline.metadata["render_worker"] = {
        "rate": f"{cut.rate.numerator}/{cut.rate.denominator}",
        "drop_frame": cut.drop_frame,
        "sample_rate": cut.sample_rate,
    }
    text: str = otio.adapters.write_to_string(timeline, "otio_json")
    return text
