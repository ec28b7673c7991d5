"""gunicorn wsgi:app (and what `flask` finds in this folder)."""

from host_backend import create_app

app = create_app()
