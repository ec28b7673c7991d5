"""The baseline: a bare Flask app with one JSON endpoint, served with the service's own gunicorn settings."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/")
def index():
    """The cheapest possible JSON answer."""
    return jsonify({"success": True})
