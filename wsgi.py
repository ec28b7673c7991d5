"""WSGI entry point: gunicorn wsgi:app (see gunicorn.conf.py and Procfile)."""

from multibackend import create_app

app = create_app()
