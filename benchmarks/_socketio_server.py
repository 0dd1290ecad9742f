"""The peer of ``sidecar_broadcast.py``: python-socketio (Flask-SocketIO's engine) under gevent.

One process, ``async_mode="gevent"`` with simple-websocket on gevent's WSGI server,
and a Redis message queue (``socketio.RedisManager``) so an external process can
emit, which is how python-socketio broadcasts from outside the server.

    python benchmarks/_socketio_server.py PORT REDIS_URL
"""
from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

import socketio  # noqa: E402
from gevent import pywsgi  # noqa: E402


def main() -> None:
    port, url = int(sys.argv[1]), sys.argv[2]
    sio = socketio.Server(async_mode="gevent", client_manager=socketio.RedisManager(url),
                          cors_allowed_origins="*", logger=False, engineio_logger=False)
    app = socketio.WSGIApp(sio)
    pywsgi.WSGIServer(("127.0.0.1", port), app, log=None, backlog=4096).serve_forever()


if __name__ == "__main__":
    main()
