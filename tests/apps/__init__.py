"""WSGI apps used by the consumer, worker and benchmark tests (Flask, Pyramid, Django, bare WSGI)."""
