"""One delivery of a job, end to end: intake → lease → fetch → plan → render → store → record → event.

Free of Dramatiq: the queue layer (``actors.py``) hands a raw message here with
the collaborators it wired (record store, storage, event sender), and maps the
returned :class:`Outcome` or the raised error onto acks and retries. The same
function runs against in-memory collaborators in unit tests.

Retry policy, in one place:

* permanent errors (the input's fault, or a render timeout) fail the record at
  once and send ``render.failed``;
* transient errors (storage, network, lost lease races, shutdown) release the
  lease and propagate, so the queue retries the message with backoff, unless
  this was the last attempt, in which case the record fails with the code of
  the error (``storage_failed`` for storage); a configuration error (missing
  credentials, say) is permanent: retrying cannot fix it;
* a render's scratch directory is keyed by its render id and kept when a
  transient error comes after the output was rendered (an upload that failed),
  so the retry uploads that output instead of rendering it again;
* unexpected exceptions are bugs: the record fails with ``internal_error``
  rather than looping through retries;
* a render whose record was cancelled (:meth:`RecordStore.cancel`) stops for
  good: :class:`~worker.pipeline.guards.Watch` reads the record's state every :data:`CANCEL_POLL_S`
  while the job runs and stops ffmpeg through the render's cancel event; the
  partial output and the scratch directory go, nothing is uploaded (an object
  uploaded just before the cancel landed is deleted again), the message is
  acknowledged and ``render.cancelled`` is handed over.

Who sends ``render.cancelled``: whoever handles the job's message and finds
the record cancelled with no event handed over yet (:func:`~worker.pipeline.events.terminal_event`),
exactly as for a lost ``render.completed``. That is the worker rendering it
when the cancel lands, or, for a render cancelled while queued (or whose
worker crashed), the worker that picks the message up and acknowledges it.
The canceller sends nothing: it does not hold the webhook (only the message
does), and a single sender keeps the event to one.

The modules, in the order a delivery meets them:

* :mod:`~worker.pipeline.flow`: :func:`process`, one delivery top to bottom, and the retry policy above;
* :mod:`~worker.pipeline.guards`: the lease (renewal, progress), the cancel and shutdown watch, a part's lease;
* :mod:`~worker.pipeline.sources`: the source fetched (size, version, disk room) or taken from the cache;
* :mod:`~worker.pipeline.chunked`: the chunked-render protocol (dispatch, parts, barrier, assembly);
* :mod:`~worker.pipeline.export_job`: an editor export, stored like an output;
* :mod:`~worker.pipeline.outputs`: output keys, reuse by fingerprint, download names and URLs;
* :mod:`~worker.pipeline.completion`: completing a stored render while the record store comes and goes;
* :mod:`~worker.pipeline.events`: the one terminal event of each render, and failing a record;
* :mod:`~worker.pipeline.messages`: what a client reads in a record or an event;
* :mod:`~worker.pipeline.deps`: the collaborators a delivery is given, and its outcomes.
"""

from worker.pipeline.chunked import TMP_PREFIX, audio_key, piece_key, process_part
from worker.pipeline.deps import Deps, EventSender, Observer, Outcome
from worker.pipeline.events import CANCELLED, COMPLETED, FAILED
from worker.pipeline.flow import process
from worker.pipeline.guards import CANCEL_POLL_S
from worker.pipeline.messages import MAX_ERROR_MESSAGE, bounded_message, client_message
from worker.pipeline.outputs import download_name, download_url

__all__ = [
    "CANCELLED",
    "CANCEL_POLL_S",
    "COMPLETED",
    "FAILED",
    "MAX_ERROR_MESSAGE",
    "TMP_PREFIX",
    "Deps",
    "EventSender",
    "Observer",
    "Outcome",
    "audio_key",
    "bounded_message",
    "client_message",
    "download_name",
    "download_url",
    "piece_key",
    "process",
    "process_part",
]
