"""gunicorn settings for an app that pushes with wsgi_channels (see docs/deployment.md).

    gunicorn -c docs/gunicorn.conf.py myapp:app

Nothing here is required: wsgi_channels works with gunicorn's defaults and any worker
class. These are the settings that matter beside a sidecar and workers.
"""
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# Any number of workers, any class: sockets live in the sidecar, so no `-w 1`, no sticky sessions.
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")  # or "gthread", or "gevent"
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
# The layer every process shares; layers connect lazily per process id, so forked workers
# never share a Redis socket or a file handle with the arbiter.
raw_env = [f"WSGI_CHANNELS_LAYER={os.environ.get('WSGI_CHANNELS_LAYER', 'redis://127.0.0.1:6379/0')}"]
# Keep preload_app off unless the app opens no layer connection at import time (it never
# needs to: get_layer() connects on first use, in each worker).
preload_app = False
graceful_timeout = 30
accesslog = "-"


def child_exit(server, worker):
    """Prometheus multiprocess mode: forget the metrics files of a worker that exited."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
