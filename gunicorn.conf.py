"""Production gunicorn settings (Procfile `web:`): $PORT, $WEB_CONCURRENCY workers, masked access log on stdout."""

import glob
import os
import tempfile

from multibackend.config import read_setting

bind = f"0.0.0.0:{read_setting(os.environ, 'PORT')}"
workers = read_setting(os.environ, "WEB_CONCURRENCY")
worker_class = "gthread"
threads = read_setting(os.environ, "GUNICORN_THREADS")
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

# Prometheus multiprocess mode: every worker writes its counters into one directory that /metrics reads.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="multibackend-prometheus-")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
for stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
    os.remove(stale)


def child_exit(server, worker):  # noqa: ANN001 (gunicorn hook)
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)

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
