"""What the fast paths promise: failed authentication is limited on every door a secret opens (and never blocks
valid credentials), the limit cannot be overshot by a concurrent burst, unsigned lookups are counted without a
round trip yet shared between workers, held lookup answers follow writes made anywhere, concurrent cold lookups
share their reads, set-based backfill."""

from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask import request, request_started

from multibackend.services import lookup_cache
from multibackend.round_trips import SharedRoundTrips
from multibackend.services.webhook_auth import lookup_signature, sign
from tests.helpers import WEBHOOK, count_rows, dead_database_url

SECRET = "s3cret"
LOOKUP = "/api/chatwoot/webhooks/company/"
OPERATOR_DOORS = ["/api/chatwoot/webhooks/metrics", "/metrics", "/api/chatwoot/webhooks/dashboard", "/api/chatwoot/webhooks/dashboard/data"]


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"operator:{password}".encode()).decode()}


def guarded_app(make_app, limit: str = "3 per minute", **settings):
    return make_app(CHATWOOT_WEBHOOK_SECRET=SECRET, RATELIMIT_AUTH_FAILURES=limit, **settings)


@pytest.mark.parametrize("door", OPERATOR_DOORS)
def test_every_operator_door_limits_failed_secrets(make_app, clean_database, door):
    client = guarded_app(make_app).test_client()
    statuses = [client.get(f"{door}?token=guess{i}").status_code for i in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    limited = client.get(door, headers=basic("guess"))
    assert (limited.status_code, limited.json["code"]) == (429, "rate_limited")
    assert int(limited.headers["Retry-After"]) > 0


def test_all_doors_share_one_failed_authentication_limit(make_app, clean_database):
    client = guarded_app(make_app).test_client()
    assert client.post(f"{WEBHOOK}?token=guess", json={"id": 1, "name": "One"}).status_code == 403
    assert client.get("/api/chatwoot/webhooks/metrics?token=guess").status_code == 401
    assert client.get("/api/chatwoot/webhooks/dashboard", headers=basic("guess")).status_code == 401
    assert client.get("/metrics?token=guess").status_code == 429
    assert client.post(f"{WEBHOOK}?token=guess", json={"id": 1, "name": "One"}).status_code == 429


def test_valid_credentials_pass_an_address_over_the_limit(make_app, clean_database):
    client = guarded_app(make_app).test_client()
    for i in range(5):
        client.get(f"/metrics?token=guess{i}")
    body = json.dumps({"id": 7, "name": "Seven", "event": "account_created"}).encode()
    now = int(time.time())
    signed = client.post(
        WEBHOOK, data=body, content_type="application/json",
        headers={"X-Chatwoot-Signature": sign(SECRET, now, body), "X-Chatwoot-Timestamp": str(now)},
    )
    assert signed.status_code == 200  # a valid signature is never blocked by others' failures
    assert client.get(f"/api/chatwoot/webhooks/metrics?token={SECRET}").status_code == 200
    assert client.get("/api/chatwoot/webhooks/dashboard/data", headers=basic(SECRET)).status_code == 200
    assert client.post(f"{WEBHOOK}?token={SECRET}", json={"id": 8, "name": "Eight"}).status_code == 200
    assert count_rows(clean_database, "companies") == 2


def test_a_concurrent_burst_never_passes_more_failures_than_the_limit(make_app, clean_database):
    apps = [guarded_app(make_app, "20 per minute") for _ in range(2)]  # two workers

    def guess(i: int) -> int:
        return apps[i % 2].test_client().post(f"{WEBHOOK}?token=guess{i}", json={"id": 1, "name": "x"}).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(guess, range(150)))
    assert statuses.count(403) == 20 and statuses.count(429) == 130


def test_signed_lookups_count_only_bad_signatures(make_app, clean_database):
    client = guarded_app(make_app, CHATWOOT_EMBED_SECRET="embed", RATELIMIT_LOOKUP="2 per minute").test_client()
    for _ in range(10):  # a valid sig is never counted (enumeration is impossible)
        assert client.get(f"{LOOKUP}5?sig={lookup_signature('embed', 5)}").status_code == 200
    statuses = [client.get(f"{LOOKUP}5?sig=bad{i}").status_code for i in range(5)]
    assert statuses == [403, 403, 403, 429, 429]
    assert client.get(f"{LOOKUP}5?sig={lookup_signature('embed', 5)}").status_code == 200


def test_unsigned_lookup_counts_reach_every_worker(make_app, clean_database, redis_client):
    first, second = make_app(RATELIMIT_LOOKUP="10 per minute"), make_app(RATELIMIT_LOOKUP="10 per minute")
    assert {first.test_client().get(LOOKUP + "1").status_code for _ in range(6)} == {200}
    with first.app_context():
        from multibackend.extensions import window_limits

        window_limits().flush()  # what each worker's background thread does every second
    second_client = second.test_client()
    assert {second_client.get(LOOKUP + "1").status_code for _ in range(4)} == {200}
    with second.app_context():
        window_limits().flush()
    assert second_client.get(LOOKUP + "1").status_code == 429  # 10 counted across both workers


def test_a_rename_reaches_a_worker_holding_the_old_answer(make_app, clean_database, redis_client):
    from multibackend.services.companies import company_write, companies_in

    holder, writer = make_app(), make_app()
    writer.test_client().post(WEBHOOK, json={"id": 42, "name": "Acme Corp"})
    holder_client = holder.test_client()
    assert holder_client.get(LOOKUP + "42").json["data"]["company_name"] == "Acme Corp"  # now held
    with holder.app_context():
        assert lookup_cache.cached_answer(42) is not None
    with writer.app_context(), company_write():
        companies_in(["42"])["42"].rename("Acme Renamed")
    deadline = time.monotonic() + lookup_cache.HELD_SECONDS
    while holder_client.get(LOOKUP + "42").json["data"]["company_name"] != "Acme Renamed":
        assert time.monotonic() < deadline
        time.sleep(0.002)
    assert time.monotonic() < deadline - lookup_cache.HELD_SECONDS + 1.0  # in practice: pub/sub, milliseconds


def test_a_lookup_is_never_held_for_an_unknown_account(make_app, clean_database, redis_client):
    poller, writer = make_app().test_client(), make_app().test_client()
    assert poller.get(LOOKUP + "9").json["data"] == {"exists": False}
    writer.post(WEBHOOK, json={"id": 9, "name": "Nine"})
    assert poller.get(LOOKUP + "9").json["data"]["exists"] is True  # the very next lookup, on another worker


def test_a_lookup_of_an_unknown_account_asks_redis_nothing_when_nothing_is_spooled(make_app, clean_database, redis_client):
    poller = make_app().test_client()
    poller.get(LOOKUP + "1")  # subscribed
    before = redis_client.info("commandstats").get("cmdstat_hget", {}).get("calls", 0)
    assert [poller.get(LOOKUP + str(account_id)).json["data"] for account_id in range(100, 150)] == [{"exists": False}] * 50
    assert redis_client.info("commandstats").get("cmdstat_hget", {}).get("calls", 0) == before


def test_a_delivery_spooled_elsewhere_is_finished_by_a_subscribed_worker(make_app, clean_database, redis_client):
    poller = make_app().test_client()
    assert poller.get(LOOKUP + "31").json["data"] == {"exists": False}  # subscribed before the spooling
    assert make_app(DATABASE_URL=dead_database_url()).test_client().post(WEBHOOK, json={"id": 31, "name": "Spooled Co"}).status_code == 202
    deadline = time.monotonic() + 2.0
    while not (data := poller.get(LOOKUP + "31").json["data"])["exists"]:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    assert data["company_name"] == "Spooled Co" and count_rows(clean_database, "companies") == 1


def test_a_large_batch_is_one_set_based_insert(app, clean_database, redis_client):
    from multibackend.services.companies import SET_INSERT, company_row, company_write

    statements = []
    from sqlalchemy import event

    with app.app_context():
        from multibackend.extensions import db

        listener = lambda conn, cursor, statement, *args: statements.append(statement)  # noqa: E731
        event.listen(db.engine, "before_cursor_execute", listener)
        try:
            with company_write() as write:
                created = write.insert_if_absent([company_row(i, f"Company {i}") for i in range(1, 2001)])
        finally:
            event.remove(db.engine, "before_cursor_execute", listener)
    assert len(created) == 2000 and count_rows(clean_database, "companies") == 2000
    assert sum("json_to_recordset" in statement for statement in statements) == 1
    assert SET_INSERT is not None


class GatedRoundTrips:
    """A run_together that records the keys of each round trip and, while gated, waits until released; even
    accounts exist ("company <id>"), odd ones do not."""

    def __init__(self):
        self.asked: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.failure: Exception | None = None

    def __call__(self, asks):
        self.asked.append(sorted(ask.key for ask in asks))
        self.started.set()
        assert self.release.wait(5)
        for ask in asks:
            if self.failure is not None:
                ask.error = self.failure
            else:
                ask.result = f"company {ask.key}" if ask.key % 2 == 0 else None


def ask_while_a_round_trip_is_in_flight(shared: SharedRoundTrips, trips: GatedRoundTrips, later_keys: list[int], **options):
    """Start a round trip for key 2, ask for later_keys while it is in flight, release; every caller's ask."""
    with ThreadPoolExecutor(len(later_keys) + 1) as pool:
        first = pool.submit(shared.ask, 2)
        assert trips.started.wait(5)
        later = [pool.submit(shared.ask, key, None, **options) for key in later_keys]
        deadline = time.monotonic() + 5
        while shared.waiting < len(set(later_keys)):  # every later caller has asked
            assert time.monotonic() < deadline
            time.sleep(0.001)
        time.sleep(0.05)  # a refused duplicate returns at once; give it the time to
        trips.release.set()
        return first.result(), [future.result() for future in later]


def test_callers_who_ask_while_a_round_trip_is_in_flight_share_the_next_one():
    trips = GatedRoundTrips()
    first, later = ask_while_a_round_trip_is_in_flight(SharedRoundTrips(trips), trips, [2, 3, 4, 5, 4])
    assert first.result == "company 2"
    assert [ask.result for ask in later] == ["company 2", None, "company 4", None, "company 4"]
    # the round trip in flight never answers those who asked after it started (it may predate their commit)
    assert trips.asked == [[2], [2, 3, 4, 5]]


def test_a_key_already_waiting_can_be_refused_instead_of_shared():
    trips = GatedRoundTrips()
    _, later = ask_while_a_round_trip_is_in_flight(SharedRoundTrips(trips), trips, [6, 8, 6], share_key=False)
    assert [ask.result if ask else "refused" for ask in later] in (["company 6", "company 8", "refused"], ["refused", "company 8", "company 6"])
    assert trips.asked == [[2], [6, 8]]


def test_a_failed_round_trip_fails_every_caller_in_it_and_the_next_one_works():
    trips = GatedRoundTrips()
    shared = SharedRoundTrips(trips)
    trips.failure = ConnectionError("database gone")
    first, later = ask_while_a_round_trip_is_in_flight(shared, trips, [6, 7])
    assert all(isinstance(ask.error, ConnectionError) and ask.done for ask in [first, *later])
    trips.failure = None
    assert shared.ask(8).result == "company 8" and trips.asked[-1] == [8]


def test_concurrent_cold_lookups_each_get_their_own_answer(make_app, clean_database):
    writer, poller = make_app().test_client(), make_app(REDIS_URL="")  # nothing is held: every lookup reads
    for account_id in range(1, 41, 2):
        assert writer.post(WEBHOOK, json={"id": account_id, "name": f"Company {account_id}"}).status_code == 200

    def look_up(account_id: int):
        return account_id, poller.test_client().get(LOOKUP + str(account_id)).json["data"]

    with ThreadPoolExecutor(16) as pool:
        answers = dict(pool.map(look_up, [*range(1, 41), *range(40, 0, -1)]))
    assert {account_id for account_id, data in answers.items() if data["exists"]} == set(range(1, 41, 2))
    assert all(data["company_name"] == f"Company {account_id}" for account_id, data in answers.items() if data["exists"])


class Interrupted(BaseException):
    """What a timeout or a killed greenlet raises: not an Exception."""


def test_callers_of_an_interrupted_round_trip_make_their_own():
    trips = GatedRoundTrips()
    shared = SharedRoundTrips(trips)

    def interrupted(asks):
        if len(asks) == 1:  # the first round trip, for key 2, answers
            return trips(asks)
        raise Interrupted()  # the next one is interrupted before it answers anyone

    shared._run_together = interrupted
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(shared.ask, 2)
        assert trips.started.wait(5)
        later = [pool.submit(shared.ask, key) for key in (4, 5, 6)]
        deadline = time.monotonic() + 5
        while shared.waiting < 3:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        trips.release.set()
        assert first.result().result == "company 2"
        outcomes = []
        for future in later:
            try:
                ask = future.result()
                outcomes.append(("alone", ask.alone, ask.result))
            except Interrupted:
                outcomes.append(("interrupted",))
    # the one that ran the round trip is interrupted; the others are told to make their own, never given None
    assert sorted(outcomes, key=str) == sorted([("interrupted",), ("alone", True, None), ("alone", True, None)], key=str)


def lookup_seen_by_flask(app) -> list[str]:
    """The lookup paths Flask dispatched (a before_request hook of the test's own), from now on."""
    seen: list[str] = []

    def dispatched(sender, **extra):
        if request.path.startswith(LOOKUP):
            seen.append(request.path)

    app.extensions["tests.dispatched"] = dispatched  # the signal holds it weakly: it goes with the app
    request_started.connect(dispatched, app)
    return seen


def held_app(make_app, **settings):
    """A standalone app (RATELIMIT_LOOKUP high unless given) whose worker holds company 42's answer."""
    app = make_app(**{"RATELIMIT_LOOKUP": "1000 per minute", **settings})
    app.test_client().post(f"{WEBHOOK}?token={settings.get('CHATWOOT_WEBHOOK_SECRET', '')}", json={"id": 42, "name": "Acme Corp"})
    signature = settings.get("CHATWOOT_EMBED_SECRET")
    assert app.test_client().get(LOOKUP + "42" + (f"?sig={lookup_signature(signature, 42)}" if signature else "")).status_code == 200
    return app


def test_a_held_lookup_is_answered_before_flask_exactly_as_the_view_answers(make_app, clean_database, redis_client):
    app = held_app(make_app)
    seen = lookup_seen_by_flask(app)
    held = app.test_client().get(LOOKUP + "42")
    flask_dispatch = app.wsgi_app.wsgi_app  # what HeldLookupsFirst passes everything else to
    app.wsgi_app = flask_dispatch
    viewed = app.test_client().get(LOOKUP + "42")
    assert seen == [LOOKUP + "42"]  # only the second went through Flask
    assert (held.status, held.data) == (viewed.status, viewed.data)
    assert sorted(held.headers.items()) == sorted(viewed.headers.items())
    assert held.json["data"]["company_name"] == "Acme Corp"


def test_only_well_formed_gets_of_held_answers_skip_flask(make_app, clean_database, redis_client):
    app = held_app(make_app)
    seen = lookup_seen_by_flask(app)
    client = app.test_client()
    answers = [client.get(LOOKUP + "42"), client.get(LOOKUP + "042"), client.get(LOOKUP + "42/"), client.head(LOOKUP + "42"),
               client.get(LOOKUP + "7"), client.get(LOOKUP + "x42"), client.post(LOOKUP + "42")]
    assert [answer.status_code for answer in answers] == [200, 200, 404, 200, 200, 400, 405]
    assert answers[4].json["data"] == {"exists": False}  # a miss is never held: Flask and PostgreSQL answer it
    assert seen == [LOOKUP + "42/", LOOKUP + "42", LOOKUP + "7", LOOKUP + "x42", LOOKUP + "42"]
    assert answers[1].data == answers[0].data  # 042 is 42, held under its number


def test_held_lookups_count_against_the_lookup_limit(make_app, clean_database, redis_client):
    app = held_app(make_app, RATELIMIT_LOOKUP="4 per minute")  # one of the 4 counted while it was read
    statuses = [app.test_client().get(LOOKUP + "42").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused = app.test_client().get(LOOKUP + "42")
    assert (refused.json["code"], int(refused.headers["Retry-After"]) > 0) == ("rate_limited", True)


def test_held_lookups_count_the_client_behind_trusted_proxies(make_app, clean_database, redis_client):
    app = held_app(make_app, RATELIMIT_LOOKUP="2 per minute", TRUSTED_PROXY_COUNT="1")
    client = app.test_client()
    via = [client.get(LOOKUP + "42", headers={"X-Forwarded-For": address}).status_code
           for address in ("203.0.113.1", "203.0.113.1", "203.0.113.2", "203.0.113.2", "203.0.113.2")]
    assert via == [200, 200, 200, 200, 429]  # the reading counted against 127.0.0.1, not against either client


def test_signed_held_lookups_skip_flask_only_with_a_valid_signature(make_app, clean_database, redis_client):
    app = held_app(make_app, CHATWOOT_EMBED_SECRET="embed", CHATWOOT_WEBHOOK_SECRET=SECRET, RATELIMIT_AUTH_FAILURES="2 per minute")
    seen = lookup_seen_by_flask(app)
    client = app.test_client()
    valid = lookup_signature("embed", 42)
    assert [client.get(f"{LOOKUP}42?sig={valid}").status_code for _ in range(5)] == [200] * 5  # never counted
    assert seen == []
    assert [client.get(f"{LOOKUP}42{query}").status_code for query in ("", "?sig=bad", f"?sig={lookup_signature('embed', 43)}")] == [403, 403, 429]
    assert client.get(f"{LOOKUP}42?sig={valid}").status_code == 200  # a valid signature passes an address over the limit
    assert client.get(f"{LOOKUP}42?sig={valid}&sig=other").status_code == 200  # Flask decides (the first sig)
    assert client.get(f"{LOOKUP}42?sig=&sig={valid}").status_code == 429  # the first, blank: a failure, over the limit
    assert len(seen) == 5


def test_an_app_that_routes_by_host_dispatches_every_lookup(make_app, clean_database, redis_client):
    app = held_app(make_app)
    app.config["TRUSTED_HOSTS"] = ["backend.example"]
    seen = lookup_seen_by_flask(app)
    client = app.test_client()
    assert client.get(LOOKUP + "42", headers={"Host": "elsewhere.example"}).status_code == 400  # Flask's refusal
    assert client.get(LOOKUP + "42", headers={"Host": "backend.example"}).json["data"]["exists"] is True
    assert len(seen) == 2  # both dispatched by Flask, the held one too


def test_held_lookups_are_observed_once_as_hits(make_app, clean_database, redis_client):
    from tests.test_lookup_and_metrics import prometheus_sample

    app = held_app(make_app)
    before = {result: prometheus_sample("chatwoot_lookup_duration_seconds_count", result=result) for result in ("hit", "miss")}
    for _ in range(3):
        app.test_client().get(LOOKUP + "42")
    after = {result: prometheus_sample("chatwoot_lookup_duration_seconds_count", result=result) for result in ("hit", "miss")}
    assert {result: after[result] - before[result] for result in after} == {"hit": 3.0, "miss": 0.0}
