"""What every ``render-cli`` command shares: the command group, the output options, the cut plan file, and
errors on their way out.

Errors leave as :class:`CliError` carrying the error code and an exit status, so scripts can tell bad input
(2) from bad media (3) from encoder trouble (4). ``sys.exit`` is only ever reached through click.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, NoReturn

import click

from worker import presets as presets_mod
from worker.errors import ErrorCode, InvalidJob, RenderError
from worker.loudness import TARGETS
from worker.output import ASPECTS, OutputSpec
from worker.plan import Segment, parse_plan, plan_byte_limit
from worker.settings import Settings

EXIT_CODES: dict[ErrorCode, int] = {
    ErrorCode.INVALID_JOB: 2,
    ErrorCode.SOURCE_NOT_FOUND: 3,
    ErrorCode.SOURCE_UNREADABLE: 3,
    ErrorCode.SOURCE_NO_VIDEO: 3,
    ErrorCode.SOURCE_NO_AUDIO: 3,
    ErrorCode.SOURCE_TOO_LARGE: 3,
    ErrorCode.ENCODE_FAILED: 4,
    ErrorCode.STORAGE_FAILED: 5,
    ErrorCode.TIMEOUT: 6,
    ErrorCode.DISK_FULL: 7,
    ErrorCode.INTERNAL_ERROR: 1,
}


class CliError(click.ClickException):
    """A RenderError on its way out: message with the code, and a matching exit status."""

    def __init__(self, err: RenderError) -> None:
        super().__init__(f"[{err.code.value}] {err.message}")
        self.exit_code = EXIT_CODES.get(err.code, 1)  # type: ignore[misc]
        self.error = err

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def fail(err: RenderError) -> NoReturn:
    raise CliError(err)


def load_plan(path: Path | None, max_segments: int) -> list[Segment] | None:
    """Read a cut plan file: ``{"segments": [...]}`` (or the bare list).

    At most one byte past the size limit is read (a plan may be a pipe or a
    huge file), so an oversized plan is refused without being loaded; the
    rest of the checks are :func:`worker.plan.parse_plan`'s.
    """
    if path is None:
        return None
    limit = plan_byte_limit(max_segments)
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise InvalidJob(f"cannot read cut plan {path}: {exc.strerror or type(exc).__name__}") from exc
    return parse_plan(data, max_segments=max_segments, source=f"cut plan {path}")


def output_spec(
    fmt: str,
    resolution: str | None,
    vb: int | None,
    ab: int | None,
    loudness: str | None = None,
    aspect: str | None = None,
    smart: bool = True,
) -> OutputSpec:
    raw = {"format": fmt, "resolution": resolution, "video_bitrate": vb, "audio_bitrate": ab}
    return OutputSpec.from_dict({**raw, "loudness": loudness, "aspect": aspect, "smart": smart})


def output_options(func: Any) -> Any:
    tiers = presets_mod.load_tiers()
    opts = [
        click.option("--cut", "cut", type=click.Path(dir_okay=False, path_type=Path), help="Cut plan JSON."),
        click.option("--format", "fmt", required=True, type=click.Choice(presets_mod.FORMATS)),
        click.option("--resolution", type=click.Choice(list(tiers.resolutions)), default=None),
        click.option(
            "--video-bitrate",
            type=click.Choice([str(x) for x in tiers.video_allowed_mbps]),
            default=None,
            help="Mbps (default: Auto)",
        ),
        click.option(
            "--audio-bitrate",
            type=click.Choice([str(x) for x in tiers.audio_allowed_kbps]),
            default=None,
            help="kbps (default: Auto)",
        ),
        click.option(
            "--loudness",
            type=click.Choice(list(TARGETS)),
            default=None,
            help="Normalise the kept audio: podcast -16 LUFS, streaming -14, broadcast -23 (EBU R128); "
            "true peak at most -1 dBTP (default: the source's level).",
        ),
        click.option(
            "--aspect",
            type=click.Choice(list(ASPECTS)),
            default=None,
            help="Crop the picture to this aspect (mp4, mov), following the speaker's face (centred where none is "
            "seen); --resolution then sets the shorter edge, scaling up if it must (default: the source's picture).",
        ),
        click.option(
            "--smart/--no-smart",
            default=True,
            show_default=True,
            help="Copy the source's whole GOPs where its video can go out unchanged, encoding only around the "
            "cuts; --no-smart re-encodes every frame.",
        ),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def as_int(v: str | None) -> int | None:
    return int(v) if v is not None else None


#: ``-h`` as well as ``--help``, on every command (subcommands inherit a group's context settings).
CONTEXT = {"help_option_names": ["-h", "--help"]}
#: Exit status after SIGINT (Ctrl-C), as shells report a process killed by it.
EXIT_SIGINT = 128 + signal.SIGINT
#: Where ``--webhook-secret`` is also read from: not a RENDER_* name, since settings.py is the only reader of those.
WEBHOOK_SECRET_ENV = "WEBHOOK_SECRET"


def version_option(func: Any) -> Any:
    return click.version_option(package_name="render-worker")(func)


class Group(click.Group):
    """Ctrl-C anywhere in a command exits 130, not click's 1 ("Aborted!")."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(EXIT_SIGINT) from None


@click.group(cls=Group, context_settings=CONTEXT)
@version_option
def main() -> None:
    """Render cut plans with the worker's pipeline, on local files or through the queue."""
    # Every command starts by validating every RENDER_* setting, so a bad value
    # stops it here with the variable named, not later with a traceback.
    try:
        Settings.from_env()
    except RenderError as err:
        fail(err)
