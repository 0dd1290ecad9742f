"""The worker: executor threads that receive messages from the layer and run the routed consumers.

==================  ===========================================================================
``worker``          :class:`Worker`: threads, statistics, the time limit, the supervising loop
``scheduler``       who receives and who runs what: leader/follower, batches, hand-offs, I/O waits
``reply_sender``    responses' last messages of all threads, sent in shared round trips
``timelimit``       messages stuck past the time limit: found, answered, their threads replaced
``metrics``         Prometheus ``/metrics`` of one worker process
==================  ===========================================================================

The command line is ``wsgi-channels worker`` (:mod:`wsgi_channels.cli.worker`).
"""
from __future__ import annotations

from .scheduler import STEAL_AFTER, WATCH_MAX
from .timelimit import DEFAULT_TIME_LIMIT
from .worker import Worker, select_channels

__all__ = ["Worker", "select_channels", "STEAL_AFTER", "WATCH_MAX", "DEFAULT_TIME_LIMIT"]
