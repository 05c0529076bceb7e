"""``render-cli``: the worker's pipeline on local files (:mod:`worker.cli.local`), plus the queue's commands
(:mod:`worker.cli.queue`), on one command group (:mod:`worker.cli.base`).

The entry points are :func:`main` (``render-cli``) and :func:`worker_main` (``render-worker``);
:func:`read_status` and :func:`cancel_render` are the library calls behind ``status`` and ``cancel``.
"""

from __future__ import annotations

from worker.cli import local as local  # registers the local-file commands on the group
from worker.cli.base import load_plan, main
from worker.cli.queue import cancel_render, read_status, worker_main

__all__ = ["cancel_render", "load_plan", "main", "read_status", "worker_main"]
