"""Property tests of intake: whatever a tenant sends, the answer is a valid job or a short, secret-free invalid_job.

Generated JSON values and mutations of a valid message (values replaced,
deleted or inserted at any path, types swapped, huge strings, deep nesting,
``whsec_`` secrets in any field, ids with newlines, odd URIs) go to
:func:`worker.jobs.parse_job`, through :func:`worker.pipeline.process` with
in-memory collaborators, and, as documents, to the plan parser. Runs are
derandomized, so a failure reproduces on every machine.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.errors import ErrorCode, InvalidJob, UnrecordableJob
from worker.jobs import IntakeBug, Job, is_id, parse_job
from worker.output import OUTPUT_FORMATS as FORMATS  # the editor exports are formats too (issue 10)
from worker.pipeline import FAILED, Deps, Outcome, process
from worker.plan import PLAN_MAX_DEPTH, Segment, parse_plan, parse_segments, plan_byte_limit
from worker.records import MemoryRecordStore
from worker.settings import Settings
from worker.storage import MemoryStorage

SECRET = "whsec_" + base64.b64encode(b"fuzzing-the-render-intake-secret").decode()
MAX_MESSAGE = 300
MAX_SEGMENTS = 50

FUZZ = settings(
    derandomize=True,  # the same examples on every run and machine
    deadline=None,  # huge strings take a while on a slow core; the bound is the run time, not one example
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def valid_message() -> dict[str, Any]:
    return {
        "version": 1,
        "render_id": "rnd_01J",
        "asset_id": "ast_01J",
        "cut_id": "cut_01J",
        "source": {"uri": "s3://media/assets/ast_01J/source.mp4"},
        "segments": [{"start": 1.25, "end": 4.5}, {"start": 5.1, "end": 9.0}],
        "output": {"format": "mp4", "resolution": "1080p", "video_bitrate": None, "audio_bitrate": None},
        "webhook": {"url": "https://example.com/hooks", "secret": SECRET},
    }


# -- values a tenant might send -------------------------------------------------------------------------

secrets = st.one_of(
    st.just(SECRET),
    st.binary(min_size=18, max_size=48).map(lambda b: "whsec_" + base64.b64encode(b).decode()),
    st.binary(min_size=18, max_size=48).map(lambda b: "https://x.example/?s=whsec_" + base64.b64encode(b).decode()),
)
ids = st.one_of(
    st.sampled_from(["rnd_1\n", "rnd_1\r\n", "\nrnd_1", "rnd 1", "rnd_1\x00", "../x", ".x", "a" * 128, "a" * 129]),
    st.from_regex(r"[A-Za-z0-9_\-\n. /]{0,140}", fullmatch=True),
)
uris = st.one_of(
    st.sampled_from(
        [
            "",
            "s3:",
            "s3:/",
            "s3://",
            "s3:///k",
            "s3://b",
            "s3://b/",
            "S3://media/a.mp4",
            "s3://media/../renders/rnd_1/rnd_1.mp4",
            "s3://media/a/./b",
            "s3://media//a",
            "s3://media/a\nb",
            "s3://media/\ud800",
            "s3://[/x",
            "s3://b?x/k",
            "s3://us@er/k",
            "s3://media/" + "k" * 1025,
            "file://[",
            "file:///tmp/../etc/passwd",
            "file:///tmp/a\x00",
            "file:relative",
            "http://169.254.169.254/latest",
            "gs://b/k",
        ]
    ),
    st.builds(lambda b, k: f"s3://{b}/{k}", st.text(max_size=12), st.text(max_size=40)),
    st.text(max_size=60),
)
urls = st.one_of(
    st.sampled_from(
        [
            "http://127.0.0.1/",
            "http://[::1]:80/",
            "http://0x7f000001/",
            "http://2130706433/",
            "https://exa mple.com/",
            "https://example.com:0/",
            "https://example.com:99999/",
            "https://[/",
            "ftp://example.com/",
            "https://example.com/" + "p" * 5000,
        ]
    ),
    secrets.map(lambda s: f"https://example.com/hook?token={s}"),
    st.text(max_size=60),
)


def _repeat(args: tuple[str, int]) -> str:
    chunk, n = args
    return chunk * n


huge_strings = st.tuples(
    st.sampled_from(["A", "é", "\n", "/..", "whsec_", SECRET, "{[", "\ud800"]), st.integers(1_000, 300_000)
).map(_repeat)


def _nest(args: tuple[int, bool]) -> Any:
    """A value nested ``depth`` levels deep, built without recursion."""
    depth, as_dict = args
    value: Any = SECRET
    for _ in range(depth):
        value = {"k": value} if as_dict else [value]
    return value


deep = st.tuples(st.integers(1, 3_000), st.booleans()).map(_nest)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    secrets,
    ids,
    uris,
    st.sampled_from(FORMATS + ("720p", "1080p", "4k", "", "mp4\n")),
)
keys = st.one_of(
    st.sampled_from(sorted(valid_message()) + ["url", "secret", "uri", "start", "end"]), st.text(max_size=12), secrets
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)),
    max_leaves=25,
)
values = st.one_of(json_values, huge_strings, deep, urls)


# -- mutations of a valid message ----------------------------------------------------------------------


def paths(value: Any, max_depth: int = 12) -> list[tuple[Any, ...]]:
    """Paths to values inside ``value`` (dict keys and list indexes), the root included, down to ``max_depth``.

    Iterative and depth-bounded: earlier mutations may have inserted values nested thousands deep.
    """
    out: list[tuple[Any, ...]] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        out.append(path)
        if len(path) >= max_depth:
            continue
        if isinstance(item, dict):
            stack.extend(((*path, key), child) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend(((*path, i), child) for i, child in enumerate(item))
    return out


def _get(root: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        root = root[part]
    return root


def _as_text(value: Any, dump: Callable[[Any], str]) -> str:
    try:
        return dump(value)
    except RecursionError:  # a value nested thousands deep has no text form; any long string will do
        return SECRET * 100


def _swap(value: Any, how: int) -> Any:
    """``value`` turned into another JSON type: wrapped in a list or object, made text, or null."""
    swaps: list[Callable[[Any], Any]] = [
        lambda v: [v],
        lambda v: {"v": v},
        lambda v: _as_text(v, str),
        lambda v: None,
        lambda v: _as_text(v, lambda x: json.dumps(x, default=str)),
    ]
    return swaps[how](value)


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """A valid message with 1–3 of: a value replaced, a key or item deleted, a key inserted, a type swapped."""
    msg: Any = valid_message()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(msg)))
        op = draw(st.sampled_from(["replace", "delete", "insert", "swap"]))
        target = _get(msg, path)
        if op == "replace" or not path and op == "delete":
            new = draw(values)
        elif op == "swap":
            new = _swap(target, draw(st.integers(0, 4)))
        elif op == "delete":
            parent = _get(msg, path[:-1])
            del parent[path[-1]]
            continue
        else:  # insert
            if isinstance(target, dict):
                target[draw(keys)] = draw(values)
            elif isinstance(target, list):
                target.insert(draw(st.integers(0, len(target))), draw(values))
            continue
        if path:
            _get(msg, path[:-1])[path[-1]] = new
        else:
            msg = new
    return msg


messages = st.one_of(mutated(), mutated(), mutated(), values)


# -- the properties ------------------------------------------------------------------------------------

_SECRET_IN_INPUT = re.compile(r"whsec_([A-Za-z0-9+/=_-]{16,})")


def secrets_in(value: Any) -> set[str]:
    """The body (after ``whsec_``) of every secret anywhere in ``value``, keys included; walked without recursion."""
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.update(m.group(1)[:16] for m in _SECRET_IN_INPUT.finditer(item))
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def check_message(message: str, raw: Any) -> None:
    assert len(message) <= MAX_MESSAGE, f"{len(message)} chars: {message[:400]!r}"
    # "whsec_<redacted>" (perhaps cut short, "whsec_<red…") is fine; any secret character after the prefix is not.
    assert not re.search(r"whsec_[A-Za-z0-9+/=_-]", message), message
    for body in secrets_in(raw):
        assert body not in message, message


def check_refusal(err: InvalidJob, raw: Any) -> None:
    assert err.code is ErrorCode.INVALID_JOB
    # IntakeBug is the catch-all: reaching it means some check raised TypeError & co.
    assert not isinstance(err, IntakeBug), f"a check raised {type(err.__cause__).__name__}: {err.__cause__!r}"
    check_message(err.message, raw)


def message_of(job: Job) -> dict[str, Any]:
    """The job message that says what ``job`` says (what the API would send for it)."""
    return {
        "version": 1,
        "render_id": job.render_id,
        "asset_id": job.asset_id,
        "cut_id": job.cut_id,
        "source": {"uri": job.source_uri},
        "segments": None if job.segments is None else [{"start": s.start, "end": s.end} for s in job.segments],
        "output": job.output.to_dict(),
        "webhook": None if job.webhook is None else {"url": job.webhook.url, "secret": job.webhook.secret},
    }


@settings(FUZZ, max_examples=3000)
@given(raw=messages, private=st.booleans(), fenced=st.booleans())
def test_parse_job_gives_a_job_or_a_short_secret_free_invalid_job(raw: Any, private: bool, fenced: bool) -> None:
    buckets = ("uploads",) if fenced else ()
    try:
        job = parse_job(raw, max_segments=MAX_SEGMENTS, allow_private_webhooks=private, source_buckets=buckets)
    except InvalidJob as err:
        check_refusal(err, raw)
        return
    assert isinstance(job, Job)
    assert all(is_id(v) for v in (job.render_id, job.asset_id)) and (job.cut_id is None or is_id(job.cut_id))
    # A job that passed intake says the same thing when sent again.
    again = parse_job(
        message_of(job), max_segments=MAX_SEGMENTS, allow_private_webhooks=private, source_buckets=buckets
    )
    assert again == job


def test_the_mutations_reach_both_outcomes() -> None:
    """The generator is worth something only if it yields valid jobs as well as refusals."""
    outcomes: set[str] = set()

    @settings(FUZZ, max_examples=300)
    @given(raw=mutated())
    def probe(raw: Any) -> None:
        try:
            parse_job(raw)
            outcomes.add("job")
        except InvalidJob:
            outcomes.add("invalid")

    probe()
    assert outcomes == {"job", "invalid"}


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, event_type: str, render_id: str, asset_id: str, webhook: Any, extra: Any) -> None:
        self.sent.append((event_type, render_id, dict(extra)))


@settings(FUZZ, max_examples=1000)
@given(raw=messages)
def test_process_fails_every_bad_message_with_a_bounded_record_and_one_event(raw: Any) -> None:
    # Empty storage: a message that passes intake fails at once with source_not_found, so nothing renders.
    recorder = Recorder()
    deps = Deps(
        settings=Settings(max_segments=MAX_SEGMENTS, source_buckets="media"),
        records=MemoryRecordStore(),
        storage=MemoryStorage(output_bucket="out", attempts=1, base_delay_s=0, max_delay_s=0),
        send_event=recorder,
    )
    try:
        outcome = process(raw, deps, last_attempt=True)
    except UnrecordableJob as err:
        check_message(err.message, raw)
        assert recorder.sent == [] and isinstance(deps.records, MemoryRecordStore) and deps.records.render_ids() == []
        return
    assert outcome is Outcome.FAILED
    render_id = raw["render_id"]
    rec = deps.records.get(render_id)
    assert rec is not None and rec["state"] == "failed"
    assert rec["error_code"] in ("invalid_job", "source_not_found")
    check_message(rec["error_message"], raw)
    # Salvaged fields are as typed and bounded as those of a valid job.
    assert rec.get("asset_id") is None or is_id(rec["asset_id"])
    assert rec.get("cut_id") is None or is_id(rec["cut_id"])
    output = rec.get("output") or {}
    assert set(output) <= {"format", "resolution", "video_bitrate", "audio_bitrate"}
    assert output.get("format") in (None, *FORMATS)
    assert [(e, r) for e, r, _ in recorder.sent] == [(FAILED, render_id)]
    check_message(recorder.sent[0][2]["error_message"], raw)


# -- plans -----------------------------------------------------------------------------------------------


def _plan_doc(segments: Any) -> dict[str, Any]:
    return {"segments": segments}


@st.composite
def mutated_plans(draw: st.DrawFn) -> Any:
    doc: Any = _plan_doc([{"start": 0.5, "end": 1.5}, {"start": 3.0, "end": 4.0}])
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(doc)))
        new = draw(values) if draw(st.booleans()) else _swap(_get(doc, path), draw(st.integers(0, 4)))
        if path:
            _get(doc, path[:-1])[path[-1]] = new
        else:
            doc = new
    return doc


def _encode(doc: Any) -> bytes:
    try:
        return json.dumps(doc).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError, RecursionError):
        return b"[" * 10_000


plan_texts = st.one_of(
    st.one_of(mutated_plans(), json_values, deep).map(_encode),
    st.binary(max_size=200),
    st.text(alphabet='[]{}"\\:,0123456789.e- \nsegmentsartd', max_size=400).map(str.encode),
    st.integers(PLAN_MAX_DEPTH - 2, PLAN_MAX_DEPTH + 2).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 60).map(lambda n: json.dumps(_plan_doc([{"start": i, "end": i + 0.5} for i in range(n)])).encode()),
    st.just(b'{"segments": [' + b" " * plan_byte_limit(MAX_SEGMENTS) + b"]}"),
    st.just(b'{"segments": null, "note": "' + SECRET.encode() + b'"}'),
)


@settings(FUZZ, max_examples=1500)
@given(data=plan_texts)
def test_parse_plan_gives_segments_or_a_short_invalid_job(data: bytes) -> None:
    try:
        segments = parse_plan(data, max_segments=MAX_SEGMENTS)
    except InvalidJob as err:
        assert err.code is ErrorCode.INVALID_JOB
        check_message(err.message, data.decode("utf-8", "replace"))
        return
    assert segments is None or (0 < len(segments) <= MAX_SEGMENTS and all(isinstance(s, Segment) for s in segments))
    if segments:
        assert all(0 <= s.start < s.end for s in segments)
        assert all(a.end <= b.start for a, b in zip(segments, segments[1:], strict=False))


@settings(FUZZ, max_examples=1000)
@given(raw=st.one_of(values, mutated_plans().map(lambda d: d.get("segments") if isinstance(d, dict) else d)))
def test_parse_segments_gives_segments_or_a_short_invalid_job(raw: Any) -> None:
    try:
        parse_segments(raw, max_segments=MAX_SEGMENTS)
    except InvalidJob as err:
        assert err.code is ErrorCode.INVALID_JOB
        check_message(err.message, raw)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"[" * 100_000, "nested more than"),
        (b'{"a":' * 50_000, "nested more than"),
        (b'["' + b"[" * 100_000 + b'"]', "segments[0] must be"),  # brackets inside a string are not nesting
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"segments": [{"start": 0, "end": 1' + b"0" * 5000 + b"}]}", "not valid JSON"),
        (b" " * (plan_byte_limit(10_000) + 1), "larger than"),
    ],
)
def test_plans_that_would_exhaust_the_parser_are_refused(data: bytes, needle: str) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_plan(data, max_segments=10_000)
    assert needle in info.value.message and len(info.value.message) <= MAX_MESSAGE
