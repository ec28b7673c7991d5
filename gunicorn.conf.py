"""Production gunicorn settings (Procfile `web:`): $PORT, $WEB_CONCURRENCY workers, masked access log on stdout."""

import glob
import logging
import os
import shutil
import signal
import tempfile
import warnings

import gevent
from gevent.monkey import MonkeyPatchWarning

from multibackend.config import check_settings, read_setting, read_settings, stop_on_wrong_setting

with stop_on_wrong_setting():  # every setting, the app's too: a wrong one is one line here, not a worker traceback
    check_settings(os.environ)

bind = f"0.0.0.0:{read_setting(os.environ, 'PORT')}"
workers = read_setting(os.environ, "WEB_CONCURRENCY")
# gevent: a connection costs a greenlet, not a thread, so clients that send half a request and wait (or a slow
# network) cannot take every worker's threads away from /livez and Chatwoot's deliveries. psycopg 3 and redis-py
# wait cooperatively once gevent has patched the standard library (the worker does it before loading the app).
worker_class = "gevent"
worker_connections = read_setting(os.environ, "GUNICORN_WORKER_CONNECTIONS")
# The master imports redis (through this package), whose unused asyncio client imports ssl names directly; gevent
# warns about exactly that module in every worker. Any other module named in the warning still shows it.
warnings.filterwarnings(
    "ignore", message=r"Monkey-patching ssl after ssl.*\['redis\.asyncio\.connection [^,\]]*\]\. *$",
    category=MonkeyPatchWarning,
)
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = read_setting(os.environ, "LOG_LEVEL").lower()
logger_class = "multibackend.gunicorn_logging.MaskingGunicornLogger"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'
# gunicorn's control socket lives at one fixed path per user; several servers on a host would fight over it.
control_socket_disable = True

# Prometheus multiprocess mode: every worker writes its counters into one directory that /metrics reads; a
# directory made here is removed when gunicorn stops (one given in PROMETHEUS_MULTIPROC_DIR is only emptied).
_OWN_PROMETHEUS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_PROMETHEUS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="multibackend-prometheus-")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
for stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
    os.remove(stale)

NO_SECRET_WARNING = "[Chatwoot Webhook] CHATWOOT_WEBHOOK_SECRET is not set"


def on_starting(server):  # noqa: ANN001 (gunicorn hook)
    """The master says once per start what every worker would otherwise repeat: webhooks are not authenticated."""
    if not read_settings(os.environ)["CHATWOOT_WEBHOOK_SECRETS"]:
        server.log.warning(
            "%s: webhook deliveries are accepted without authentication. Set it and add ?token=<secret> to the "
            "URL configured in Chatwoot.", NO_SECRET_WARNING,
        )


def post_fork(server, worker):  # noqa: ANN001 (gunicorn hook)
    """Workers leave that warning to the master (on_starting). A stop that arrives between the fork and gunicorn's
    own signal handlers (gevent's patching happens there) ends the worker once booted instead of being lost: the
    master would otherwise wait out graceful_timeout (20 s) and kill it, leaving the Prometheus folder behind."""
    logging.getLogger("multibackend").addFilter(lambda record: not str(record.msg).startswith(NO_SECRET_WARNING))
    for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(stop, lambda signum, frame: setattr(worker, "alive", False))


def post_request(worker, req, environ, resp):  # noqa: ANN001 (gunicorn hook)
    """Let the worker's other connections go next: a keep-alive client whose next request is already there would
    otherwise be served again and again (p99 of lookups under load: ~400-750 ms without this, ~120-200 ms with)."""
    gevent.sleep(0)


def child_exit(server, worker):  # noqa: ANN001 (gunicorn hook)
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # noqa: ANN001 (gunicorn hook)
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if _OWN_PROMETHEUS_DIR:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        for counters in glob.glob(os.path.join(directory, "*.db")):
            os.remove(counters)


# LOG_FORMAT=json: gunicorn's own lines (start-up, access) are JSON objects too, one per line.
if read_setting(os.environ, "LOG_FORMAT") == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "multibackend.logging_setup.JsonFormatter"}},
        "handlers": {
            "error_console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
            "console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    }
