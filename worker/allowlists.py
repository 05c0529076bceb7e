"""What a tenant's source may be opened with: one policy for the probe and for every later open of the file
(PyAV's in the worker, ffmpeg's in a render), so they all look at it through the same restrictions.

* only an allowlist of demuxers may open the file (``format_whitelist``), so a playlist (HLS, ffconcat, ...)
  disguised as ``.mp4`` is refused *before* its header is parsed, which is the moment such demuxers would open
  other files;
* only the ``file`` protocol is allowed, so nothing can reach the network;
* only an allowlist of decoders may run (``codec_whitelist``), and every decoder refuses frames over the pixel
  limit (``max_pixels``): a stream whose first frame is 16x16 and whose next one is 16000x16000 cannot make us
  allocate it; once the probe has chosen the streams a render decodes, every later open allows exactly their
  decoders (:attr:`worker.probe.SourceInfo.decoders`);
* what opening may read before the streams are known is bounded (``probesize``, ``analyzeduration``), and so
  is the number of streams.
"""

from __future__ import annotations

# Demuxers a source may be opened with. Names are ffmpeg's demuxer names; the
# mov demuxer answers to all of "mov,mp4,m4a,3gp,3g2,mj2".
ALLOWED_DEMUXERS: tuple[str, ...] = (
    "mov",
    "mp4",
    "m4a",
    "3gp",
    "3g2",
    "mj2",
    "matroska",
    "webm",
    "mp3",
    "wav",
    "aac",
    "flac",
    "ogg",
    # What GarageBand, Logic and Audacity export; AVCHD camcorders (.mts/.m2ts) and broadcast or stream
    # recorders (.ts); screen recorders; phone voice recorders (raw AMR; AMR in 3gp opens with "mov").
    "aiff",
    "caf",
    "mpegts",
    "avi",
    "amr",
)
FORMAT_WHITELIST = ",".join(ALLOWED_DEMUXERS)
PROTOCOL_WHITELIST = "file"

# Decoders a source may use: what cameras, phones, screen recorders, browsers
# and podcast tools write for a talking-head video or a podcast. Names are
# ffmpeg's *decoder* names (``ffmpeg -decoders``), which are what
# ``codec_whitelist`` matches: mp3 is decoded by ``mp3float``, AV1 by
# ``libdav1d`` where the build has it. Everything else (image formats, game and
# legacy codecs, the many exotic decoders a static ffmpeg ships) is refused,
# which keeps a tenant's bytes away from the least-exercised decoder code.
ALLOWED_DECODERS: tuple[str, ...] = (
    # video
    "h264",
    "hevc",
    "vp8",
    "vp9",
    "libdav1d",
    "av1",
    "mpeg4",
    "prores",
    "dnxhd",  # DNxHD and DNxHR in mov: Resolve and Avid exports
    "mjpeg",
    # audio
    "aac",
    "aac_fixed",
    "mp3float",
    "mp3",
    "opus",
    "vorbis",
    "flac",
    "alac",
    "ac3",
    "ac3_fixed",
    "eac3",
    "pcm_s16le",
    "pcm_s16be",
    "pcm_s24le",
    "pcm_s24be",
    "pcm_s32le",
    "pcm_s32be",
    "pcm_f32le",
    "pcm_f32be",
    "pcm_f64le",
    "pcm_f64be",
    "pcm_u8",
    "pcm_s8",
    "pcm_alaw",
    "pcm_mulaw",
    "pcm_bluray",  # LPCM in AVCHD's m2ts
    "amrnb",  # phone voice recorders (3gp, .amr)
    "amrwb",
)
CODEC_WHITELIST = ",".join(ALLOWED_DECODERS)
# Decoders of still pictures. Cover art is never decoded, so the probe's first open (which opens a decoder for
# every stream it can, to learn the streams' parameters) leaves these out; a video stream that really is
# MJPEG (an old camera's AVI) gets its decoder in the opens after it has been chosen.
STILL_IMAGE_DECODERS: tuple[str, ...] = ("mjpeg",)
# Cover art an m4a or mp3 output can carry (MP4 ``covr`` and ID3 APIC), by decoder name: copied, not decoded.
COVER_CODECS: tuple[str, ...] = ("mjpeg", "png")

# Bounds on what opening a file may read before the streams are known
# (ffmpeg's find_stream_info): bytes, and microseconds of media. These are
# ffmpeg's usual magnitudes, stated so that no build default can widen them.
PROBESIZE = 10_000_000
ANALYZEDURATION_US = 10_000_000
# A talking-head source has a handful of streams; a crafted one may declare
# thousands, each with its own decoder during find_stream_info.
MAX_STREAMS = 64


def decoder_options(max_pixels: int, decoders: tuple[str, ...] = ALLOWED_DECODERS) -> dict[str, str]:
    """AVCodecContext options every decoder of a tenant's source is opened with.

    ``decoders``: the decoders allowed; once the streams are chosen, only theirs (:attr:`SourceInfo.decoders`).
    """
    allowed = [d for d in decoders if d in ALLOWED_DECODERS]
    # An empty whitelist would mean "no restriction" to ffmpeg; a name no decoder has allows none.
    return {"codec_whitelist": ",".join(allowed) or "none", "max_pixels": str(max_pixels)}


def input_options(max_pixels: int, decoders: tuple[str, ...] = ALLOWED_DECODERS) -> dict[str, str]:
    """Every option an input is opened with, by ffmpeg option name (probe and render alike)."""
    return {
        "protocol_whitelist": PROTOCOL_WHITELIST,
        "format_whitelist": FORMAT_WHITELIST,
        "probesize": str(PROBESIZE),
        "analyzeduration": str(ANALYZEDURATION_US),
        "max_streams": str(MAX_STREAMS),
        **decoder_options(max_pixels, decoders),
    }
