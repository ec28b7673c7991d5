"""Abuse and operator mistakes: stalled clients, refused floods, chunked bodies, secrets in logs, names,
JSON headers, wrong settings at start-up."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import requests

from tests.helpers import LIVE_SECRET, ROOT, WEBHOOK, LiveServer, free_port

STALLED_CLIENTS = 40


def half_requests(url: str, count: int) -> list[socket.socket]:
    """`count` connections that send the first half of a request and then wait."""
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(count):
        stalled = socket.create_connection((host, int(port)), timeout=5)
        stalled.sendall(f"POST {WEBHOOK} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n".encode())
        sockets.append(stalled)
    return sockets


def test_stalled_clients_do_not_starve_the_service(production_server):
    stalled = half_requests(production_server.url, STALLED_CLIENTS)
    try:
        time.sleep(0.5)  # every stalled request has reached a worker
        livez = []
        for _ in range(6):
            started = time.perf_counter()
            assert requests.get(f"{production_server.url}/livez", timeout=8).status_code == 200
            livez.append(time.perf_counter() - started)
        started = time.perf_counter()
        delivery = requests.post(
            f"{production_server.url}{WEBHOOK}?token={LIVE_SECRET}", json={"id": 778001, "name": "Stalled"}, timeout=8
        )
        delivered_in = time.perf_counter() - started
    finally:
        for connection in stalled:
            connection.close()
    assert max(livez) < 1.0, livez
    assert delivery.status_code == 200 and delivered_in < 5.0


def raw_request(url: str, data: bytes, timeout: float = 5) -> bytes:
    """Send bytes as they are and read the whole answer (the server closes or answers with Connection: close)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.split(b"\r\n\r\n", 1)[0].lower().find(b"content-length") >= 0:
                head, body = answer.split(b"\r\n\r\n", 1)
                length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1])
                if len(body) >= length:
                    break
    return answer


def chunked(body: bytes, size: int = 100) -> bytes:
    chunks = [body[start:start + size] for start in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


def test_a_chunked_body_over_the_limit_gets_413(production_server):
    body = b'{"id": 778002, "name": "' + b"x" * 2000 + b'"}'  # the server's limit is 1000 bytes
    answer = raw_request(
        production_server.url,
        f"POST {WEBHOOK}?token={LIVE_SECRET} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode() + chunked(body),
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"code":"payload_too_large"' in answer.replace(b" ", b"")


def test_a_chunked_body_within_the_limit_is_delivered(production_server):
    body = b'{"id": 778003, "name": "Chunked Co"}'
    answer = raw_request(
        production_server.url,
        f"POST {WEBHOOK}?token={LIVE_SECRET} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode() + chunked(body, 7),
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


# ---- 5. a flood of refused deliveries costs no database write ------------------------------------------------


def database_commits(app) -> list[int]:
    """A list that grows by one at every COMMIT the app's engine sends (from now on)."""
    from sqlalchemy import event

    from multibackend.extensions import db

    commits: list[int] = []
    with app.app_context():
        event.listen(db.engine, "commit", lambda connection: commits.append(1))
    return commits


REFUSALS = [
    ({"data": b'{"id": 1, "name": "' + b"x" * 2000 + b'"}'}, 413),  # over the 1000-byte limit
    ({"data": b'{"id": 1, "name": '}, 400),  # invalid JSON
]


def refuse_deliveries(client, count: int) -> None:
    for number in range(count):
        request, status = REFUSALS[number % 2]
        assert client.post(WEBHOOK, content_type="application/json", **request).status_code == status


def rejected_count(client) -> int:
    from multibackend.services import sync_metrics

    forget = getattr(sync_metrics, "forget_metrics", None)  # metrics may be reused for a second: read afresh
    if forget is not None:
        with client.application.app_context():
            forget()
    return client.get("/api/chatwoot/webhooks/metrics").get_json()["data"]["rejected_count"]


def test_refused_deliveries_are_counted_without_a_database_write(make_app, redis_client):
    app = make_app(CHATWOOT_WEBHOOK_MAX_BODY_BYTES=1000)
    client = app.test_client()
    commits = database_commits(app)
    refuse_deliveries(client, 160)
    assert commits == []
    assert rejected_count(client) == 160


def test_refusals_are_counted_in_the_database_without_redis(make_app):
    client = make_app(CHATWOOT_WEBHOOK_MAX_BODY_BYTES=1000, REDIS_URL="").test_client()
    refuse_deliveries(client, 6)
    assert rejected_count(client) == 6


def test_refusals_are_counted_in_the_database_when_redis_fails(make_app, redis_client):
    app = make_app(CHATWOOT_WEBHOOK_MAX_BODY_BYTES=1000)
    client = app.test_client()
    refuse_deliveries(client, 2)
    redis_down = make_app(CHATWOOT_WEBHOOK_MAX_BODY_BYTES=1000, REDIS_URL="redis://127.0.0.1:1/0").test_client()
    refuse_deliveries(redis_down, 4)
    assert rejected_count(client) == 6  # 2 in Redis, 4 in the database


def counted_in_database(database_url: str) -> int:
    with psycopg.connect(database_url) as connection:
        return connection.execute("SELECT coalesce(sum(count), 0) FROM chatwoot_webhook_rejections").fetchone()[0]


def test_refusals_add_up_across_workers(production_server):
    in_database_before = counted_in_database(production_server.database_url)
    rejected_before = requests.get(
        f"{production_server.url}/api/chatwoot/webhooks/metrics?token={LIVE_SECRET}", timeout=10
    ).json()["data"]["rejected_count"]
    time.sleep(1.1)
    for number in range(40):
        body = b"x" * 2000 if number % 2 else b"{"
        answer = requests.post(f"{production_server.url}{WEBHOOK}?token={LIVE_SECRET}", data=body,
                               headers={"Content-Type": "application/json"}, timeout=10)
        assert answer.status_code == (413 if number % 2 else 400)
    time.sleep(1.1)  # metrics may be reused by a worker for a second
    metrics = requests.get(f"{production_server.url}/api/chatwoot/webhooks/metrics?token={LIVE_SECRET}", timeout=10)
    assert metrics.json()["data"]["rejected_count"] - rejected_before == 40
    assert counted_in_database(production_server.database_url) == in_database_before


# ---- 7. secrets never reach a log line ----------------------------------------------------------------------


@pytest.mark.parametrize("query", [
    "token=s3cret-VALUE", "token[]=s3cret-VALUE", "token%5B%5D=s3cret-VALUE", "token[0]=s3cret-VALUE",
    "x=1&TOKEN=s3cret-VALUE", "to%6Ben=s3cret-VALUE", "sig=s3cret-VALUE", "a=1;secret=s3cret-VALUE",
    "token=abc;s3cret-VALUE", 'token=ab"s3cret-VALUE', "token=;s3cret-VALUE&x=1", 'a="1;token=s3cret-VALUE',
])
def test_mask_secrets_masks_every_spelling_of_a_secret_parameter(query):
    from multibackend.logging_setup import mask_secrets

    masked = mask_secrets(f"POST /api/chatwoot/webhooks/account-created?{query} HTTP/1.1")
    assert "s3cret-VALUE" not in masked and "=***" in masked


def test_an_invalid_request_line_is_logged_without_its_secret(production_server):
    answer = raw_request(
        production_server.url,
        f"POST {WEBHOOK}?token=leak-{LIVE_SECRET}\x01 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 400")
    time.sleep(0.3)
    log = production_server.log()
    assert "Invalid" in log and "token=***" in log
    assert f"leak-{LIVE_SECRET}" not in log


def test_gunicorn_json_error_lines_are_masked_too(database_url, redis_url, tmp_path):
    import json

    server = LiveServer({"DATABASE_URL": database_url, "REDIS_URL": redis_url, "CHATWOOT_WEBHOOK_SECRET": LIVE_SECRET,
                         "WEB_CONCURRENCY": "1", "LOG_FORMAT": "json"}, tmp_path / "json.log")
    try:
        raw_request(server.url, b"POST /x?token[]=json-leak-1\x01 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
    finally:
        server.stop()
    text = server.log_path.read_text()
    assert "json-leak-1" not in text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any("token[]=***" in record["message"] for record in records if record["logger"] == "gunicorn.error")


# ---- 8. names ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["\u200b\u2060\ufeff", " \u200b ", "\u202e\u200f", "\x00\u2060"])
def test_a_name_of_only_invisible_characters_is_empty(client, name):
    answer = client.post(WEBHOOK, json={"id": 779001, "name": name})
    assert answer.status_code == 422 and answer.get_json()["details"] == {"name": ["Must not be empty."]}


def test_a_name_with_a_joiner_inside_is_kept(client):
    answer = client.post(WEBHOOK, json={"id": 779002, "name": "Acme\u200dCo"})
    assert answer.status_code == 200 and answer.get_json()["data"]["company_name"] == "Acme\u200dCo"


def test_log_lines_escape_bidi_and_format_characters():
    from multibackend.logging_setup import printable

    assert printable("evil\u202etxt.exe\u200b\u2066") == "evil\\u202etxt.exe\\u200b\\u2066"


def test_every_control_and_format_character_is_escaped():
    import sys
    import unicodedata

    from multibackend.logging_setup import UNSAFE_CHARACTERS

    unsafe = [chr(point) for point in range(sys.maxunicode + 1) if unicodedata.category(chr(point)) in ("Cc", "Cf", "Zl", "Zp")]
    assert [char for char in unsafe if not UNSAFE_CHARACTERS.fullmatch(char)] == []


# ---- 9. JSON answers: no-store, nosniff, no redirect to Host ----------------------------------------------------


@pytest.mark.parametrize("path", [
    "/api/system/info", "/livez", "/api/chatwoot/webhooks/company/1", "/api/chatwoot/webhooks/metrics",
    "/api/chatwoot/webhooks/nowhere", "/nowhere",
])
def test_json_answers_are_not_cached_or_sniffed(client, path):
    answer = client.get(path)
    assert answer.mimetype == "application/json"
    assert answer.headers["Cache-Control"] == "no-store" and answer.headers["X-Content-Type-Options"] == "nosniff"


def test_a_refused_delivery_is_not_cached_either(client):
    answer = client.post(WEBHOOK, data=b"{", content_type="application/json")
    assert answer.status_code == 400 and answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/api//system/info", "//api/system/info", "/api/chatwoot//webhooks/metrics",
                                  "/api/chatwoot/webhooks//company/1", "//"])
def test_double_slashes_never_redirect_to_the_host_header(client, path):
    answer = client.get("/", environ_overrides={"PATH_INFO": path}, headers={"Host": "evil.example"})
    assert answer.status_code in (200, 404) and "Location" not in answer.headers


def test_a_host_app_keeps_its_own_answers_headers(tmp_path):
    from flask import Flask

    import multibackend
    from multibackend.extensions import db

    host = Flask("host_headers", instance_path=str(tmp_path))
    host.config.update(DATABASE_URL=f"sqlite:///{tmp_path}/host.db", REDIS_URL="")
    host.add_url_rule("/api/own", "own", lambda: {"own": True})
    host.add_url_rule("/api/also/<path:rest>", "also", lambda rest: {"rest": rest})
    multibackend.init_app(host)
    client = host.test_client()
    own = client.get("/api/own")
    assert "Cache-Control" not in own.headers and "X-Content-Type-Options" not in own.headers
    assert client.get("/api/chatwoot/webhooks/company/1").headers["Cache-Control"] == "no-store"
    assert client.get("/", environ_overrides={"PATH_INFO": "/api//own"}).status_code == 308  # the host's own rules
    with host.app_context():
        db.engine.dispose()


# ---- 10. a wrong setting: one line, non-zero exit, no traceback -------------------------------------------------

WRONG_SETTINGS = [
    ("DATABASE_POOL_SIZE", "abc", "DATABASE_POOL_SIZE must be a whole number, got 'abc'"),
    ("CHATWOOT_WEBHOOK_SECRET", " , ", "CHATWOOT_WEBHOOK_SECRET must hold a secret"),
    ("CHATWOOT_ADMIN_TOKEN", " ", "CHATWOOT_ADMIN_TOKEN must not be blank"),
    ("DATABASE_URL", "mysql://user:pw-9x@db/app", "DATABASE_URL must start with postgresql://"),
]
COMMANDS = [
    [sys.executable, "-m", "gunicorn", "wsgi:app", "--config", "gunicorn.conf.py"],
    [sys.executable, "-m", "flask", "--app", "wsgi", "chatwoot", "doctor"],
    [sys.executable, "-m", "flask", "--app", "wsgi", "chatwoot", "reconcile"],
    [sys.executable, "-m", "flask", "--app", "wsgi", "chatwoot", "init-db"],
]


@pytest.mark.parametrize(("name", "value", "line"), WRONG_SETTINGS)
@pytest.mark.parametrize("command", COMMANDS, ids=["gunicorn", "doctor", "reconcile", "init-db"])
def test_a_wrong_setting_stops_start_up_with_one_line(tmp_path, command, name, value, line):
    env = {**os.environ, name: value, "PORT": str(free_port()), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None) if name != "DATABASE_URL" else None
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    output = (finished.stdout + finished.stderr).strip()
    assert finished.returncode != 0
    assert output.splitlines() == [output] and output.startswith(f"Error: {line}"), output
    assert "Traceback" not in output and "pw-9x" not in output


# ---- 11. said once: the secret warning, the reconcile summary; /metrics; the Prometheus folder ---------------------


def test_the_missing_secret_warning_is_printed_once_per_start(database_url, redis_url, tmp_path):
    temporary = tmp_path / "tmp"  # where gunicorn.conf.py makes the Prometheus folder
    temporary.mkdir()
    server = LiveServer({"DATABASE_URL": database_url, "REDIS_URL": redis_url, "CHATWOOT_WEBHOOK_SECRET": "",
                         "WEB_CONCURRENCY": "3", "TMPDIR": str(temporary), "PROMETHEUS_MULTIPROC_DIR": ""},
                        tmp_path / "open.log")
    try:
        requests.get(f"{server.url}/metrics", timeout=5)
        made = [path.name for path in temporary.iterdir()]
        log = server.log()
    finally:
        server.stop()
    assert log.count("CHATWOOT_WEBHOOK_SECRET is not set") == 1, log
    assert len(made) == 1 and made[0].startswith("multibackend-prometheus-")
    assert list(temporary.iterdir()) == []  # removed when gunicorn stopped


def test_metrics_content_type_names_the_charset_once(client):
    answer = client.get("/metrics")
    assert answer.headers["Content-Type"].count("charset") == 1


def test_reconcile_prints_its_summary_once(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/once.db", "REDIS_URL": "", "LOG_FORMAT": "text"}
    finished = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "chatwoot", "reconcile"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    output = finished.stdout + finished.stderr
    assert output.count("Reconcile: ") == 1 and "✓ [Chatwoot Sync] Reconcile: " in finished.stdout


def test_reconcile_with_json_logs_says_it_in_one_json_line(tmp_path):
    import json

    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/once.db", "REDIS_URL": "", "LOG_FORMAT": "json"}
    finished = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "chatwoot", "reconcile"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout == ""
    summaries = [json.loads(line) for line in finished.stderr.splitlines() if "Reconcile: " in line]
    assert len(summaries) == 1 and summaries[0]["logger"] == "multibackend.services.reconciler"


BAD_CHUNKS = [b"zz\r\n", b"5\r\nab\r\n0\r\n\r\n", b"1;\x00\r\na\r\n0\r\n\r\n", b"-1\r\n", b"1\r\naXX0\r\n\r\n"]


@pytest.mark.parametrize("body", BAD_CHUNKS, ids=["not-hex", "short-chunk", "bad-extension", "negative", "no-terminator"])
def test_a_badly_framed_chunked_body_is_the_clients_400_without_a_traceback(production_server, body):
    """(Without credentials the body is never read: 403, see below.)"""
    before = production_server.log().count("Traceback")
    with socket.create_connection(("127.0.0.1", production_server.port), timeout=10) as connection:
        connection.sendall(b"POST " + f"{WEBHOOK}?token={LIVE_SECRET}".encode() + b" HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body)
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400", answer[:300]
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["code"] == "bad_request"
    time.sleep(0.2)
    assert production_server.log().count("Traceback") == before


@pytest.mark.parametrize("tail", [";TAILSECRET_semicolon", '"TAILSECRET_quote'])
def test_a_token_with_a_semicolon_or_quote_reaches_no_log_line(production_server, tail):
    requests.post(f"{production_server.url}{WEBHOOK}?token={LIVE_SECRET}{requests.utils.quote(tail, safe=';')}",
                  json={"id": 778300, "name": "Masked"}, timeout=10)
    time.sleep(0.3)
    log = production_server.log()
    assert "token=***" in log and "TAILSECRET" not in log


def test_anonymous_stalled_bodies_are_refused_unread_and_release_their_connections(production_server):
    """Credentials come from the URL and headers: a client without them is answered before its body is read, so
    300 bodies that never finish hold nothing (the stalled-clients test above keeps its connections open)."""
    sockets = []
    try:
        for _ in range(300):
            connection = socket.create_connection(("127.0.0.1", production_server.port), timeout=10)
            connection.sendall(f"POST {WEBHOOK} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                               "Content-Length: 1000\r\n\r\n{".encode())
            sockets.append(connection)
        started = time.monotonic()
        statuses = [connection.recv(64).split(b" ")[1] for connection in sockets]
        assert set(statuses) <= {b"403", b"429"} and time.monotonic() - started < 5
        assert requests.get(f"{production_server.url}/livez", timeout=2).status_code == 200
    finally:
        for connection in sockets:
            connection.close()
