"""What runs on a message: routing, the message object, consumer helpers and the WSGI bridge.

============  ==================================================================================
``routing``   ``route``/``route_class``/``include`` and :class:`Router`: which consumer a message goes to
``message``   :class:`Message`: a message's content, channel, reply channel and channel session
``consumer``  :func:`run_consumer`: one consumer on one message, its deferred sends and bounded retries
``generic``   class-based consumers (``WebsocketConsumer``, ``JsonWebsocketConsumer``, demultiplexer)
``sessions``  ``channel_session`` and ``enforce_ordering``
``wsgi``      :class:`WsgiConsumer`: a WSGI app behind ``http.request``
============  ==================================================================================

Nothing here imports the worker, the sidecar or the command line: the worker and
:mod:`wsgi_channels.testing` both drive consumers through :func:`run_consumer`.
The public names are re-exported by :mod:`wsgi_channels`.
"""
