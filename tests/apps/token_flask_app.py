"""A Flask app whose sidecar is on another origin: ``flask channels sidecar`` must share its secret."""
from __future__ import annotations

import os

from flask import Flask

from wsgi_channels.adapters.flask import Channels

app = Flask(__name__)
app.secret_key = "flask-app-secret"
app.config["WSGI_CHANNELS_LAYER"] = os.environ["TOKEN_TEST_LAYER"]
app.config["WSGI_CHANNELS_SIDECAR_URL"] = "http://127.0.0.1:8001"
Channels(app)
