"""The sans-IO protocol: bytes and WSGI calls <-> channel messages, with no sockets, threads,
gevent or layer inside (STYLE.md 1).

- :mod:`.messages`: the message ``TypedDict``s and the builders of every message a server sends;
- :mod:`.translation`: HTTP requests <-> ``http.request`` <-> WSGI environs;
- :mod:`.responses`: WSGI responses -> ``http.response`` messages, checks of reply messages;
- :mod:`.http`: one HTTP/1.1 server connection on h11, request heads checked;
- :mod:`.websocket`: the WebSocket handshake and one session on wsproto, frames;
- :mod:`.origin`: the one Origin rule (the sidecar's and the adapters');
- :mod:`.close_codes`: the close-code policy table (situation -> code -> reconnect or not).

``tests/test_import_rules.py`` keeps this package free of the sidecar, the layers, gevent,
socket, threading and redis; ``tests/test_protocol_typing.py`` keeps it ``mypy --strict`` clean.
"""
