"""The single-machine layer (``ipc:///path/to/channels.db``): every process on one host, no server.

==========  ==================================================================================
``layer``   :class:`IpcChannelLayer`: the API, processes, locks and wake-ups
``store``   the SQLite file: where it lives, who may open it, its schema, connections, write lock
``queues``  what each transaction does to the store's tables
``wake``    Unix datagram sockets that wake blocked receivers in other processes; what a process owns
==========  ==================================================================================
"""
from __future__ import annotations

from .layer import IpcChannelLayer

__all__ = ["IpcChannelLayer"]
