"""Queue depth read straight from Dramatiq's Redis keys, and discovery of queues that hold waiting jobs.

Dramatiq's Redis broker key layout (dramatiq/brokers/redis.py and redis/dispatch.lua, dramatiq 2.x):

* ``<ns>:<q>``: LIST of message ids waiting to be fetched (fetch LPOPs, enqueue RPUSHes)
* ``<ns>:<q>.msgs``: HASH id -> message; also holds fetched-but-unacked messages, so it is not "waiting"
* ``<ns>:<q>.DQ``: the delay queue, the same LIST/HASH pair; workers fetch delayed messages early and hold them
  in memory until their eta, so the HASH (``.DQ.msgs``) is the count of delayed messages
* ``<ns>:<q>.XQ``: SORTED SET of dead-lettered ids scored by time of death (+ ``.XQ.msgs`` HASH)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import redis

from worker.telemetry.definitions import QueueDepth, RenderMetrics, get_metrics

DEFAULT_NAMESPACE = "dramatiq"
_AGE_SCAN = 100  # how many ids from the head of the ready list are inspected for the oldest age
# Discovered queue names become label values: cap them so a producer with a bug cannot explode the series.
MAX_DISCOVERED_QUEUES = 32


def read_queue_depths(
    client: redis.Redis,
    queues: Iterable[str],
    *,
    namespace: str = DEFAULT_NAMESPACE,
    now: float | None = None,
) -> dict[str, QueueDepth]:
    """Read ready/delayed/dead counts and the oldest ready age of each queue from Dramatiq's Redis keys.

    * ready = ``LLEN <ns>:<q>``: waiting and not yet claimed by any worker (what KEDA scales on as well);
      messages a worker has fetched sit in the ``.msgs`` hash only and are "in progress" instead.
    * delayed = ``HLEN <ns>:<q>.DQ.msgs``: workers pull delayed messages out of the ``.DQ`` list early and hold them
      until their eta, so the list alone under-counts.
    * dead = ``ZCARD <ns>:<q>.XQ``.
    * oldest age: the message bodies at the head of the ready list carry ``message_timestamp`` (ms); a message that
      came back from the delay queue waited only since its ``eta``, so the later of the two is used.
    """
    queues = list(queues)
    now_ms = (time.time() if now is None else now) * 1000.0
    pipe = client.pipeline(transaction=False)
    for q in queues:
        base = f"{namespace}:{q}"
        pipe.llen(base)
        pipe.hlen(f"{base}.DQ.msgs")
        pipe.zcard(f"{base}.XQ")
        pipe.lrange(base, 0, _AGE_SCAN - 1)
    replies = pipe.execute()

    heads: dict[str, list[bytes]] = {}
    counts: dict[str, tuple[int, int, int]] = {}
    for i, q in enumerate(queues):
        ready, delayed, dead, head = replies[4 * i : 4 * i + 4]
        counts[q] = (int(ready), int(delayed), int(dead))
        heads[q] = list(head)

    pipe = client.pipeline(transaction=False)
    with_heads = [q for q in queues if heads[q]]
    for q in with_heads:
        pipe.hmget(f"{namespace}:{q}.msgs", heads[q])
    bodies = dict(zip(with_heads, pipe.execute(), strict=True)) if with_heads else {}

    result: dict[str, QueueDepth] = {}
    for q in queues:
        waiting_since = [t for t in (_waiting_since_ms(b) for b in bodies.get(q, [])) if t is not None]
        age = max(0.0, (now_ms - min(waiting_since)) / 1000.0) if waiting_since else 0.0
        ready, delayed, dead = counts[q]
        result[q] = QueueDepth(ready=ready, delayed=delayed, dead=dead, oldest_age_s=age)
    return result


def _waiting_since_ms(body: bytes | str | None) -> float | None:
    if body is None:  # acked between LRANGE and HMGET
        return None
    try:
        data = json.loads(body)
        since = float(data["message_timestamp"])
        eta = (data.get("options") or {}).get("eta")
        return max(since, float(eta)) if eta is not None else since
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # not Dramatiq's JSON encoding: count it, but it has no age


def discover_queues(client: redis.Redis, *, namespace: str = DEFAULT_NAMESPACE, limit: int = 64) -> set[str]:
    """Names of queues whose ready or delay list exists, i.e. that hold jobs right now.

    Redis deletes an empty list, so a queue nobody sends to is not found. This is how a producer's queue that no
    worker is configured for (a typo in ``RENDER_QUEUE``) shows up in ``render_queue_depth`` at all: the worker's
    own queues are polled anyway. ``SCAN ... TYPE list`` walks the keyspace in small steps, so the caller runs it
    rarely (see ``worker.telemetry.process``).
    """
    prefix = f"{namespace}:"
    found: set[str] = set()
    for raw in client.scan_iter(match=f"{prefix}*", count=1000, _type="list"):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        name = key[len(prefix) :].removesuffix(".DQ")
        if name and not name.startswith("__"):
            found.add(name)
            if len(found) >= limit:
                break
    return found


def update_queue_metrics(
    client: redis.Redis,
    queues: Iterable[str],
    metrics: RenderMetrics | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
) -> dict[str, QueueDepth]:
    """Read the queue depths and set ``render_queue_depth`` / ``render_queue_oldest_age_seconds``.

    Redis errors propagate; the telemetry loop then keeps the last values and reports ``render_redis_up 0``.
    """
    depths = read_queue_depths(client, queues, namespace=namespace)
    (metrics or get_metrics()).set_queue_depths(depths)
    return depths
