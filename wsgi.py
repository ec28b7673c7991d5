"""WSGI entry point: gunicorn wsgi:app (see gunicorn.conf.py and Procfile), and `flask --app wsgi chatwoot ...`."""

from multibackend import create_app
from multibackend.config import stop_on_wrong_setting

APP_LOAD_ERROR = 4  # gunicorn's worker exit code for "the app cannot load": the master stops instead of retrying

with stop_on_wrong_setting(APP_LOAD_ERROR):  # a wrong setting: one line, no traceback
    app = create_app()
