"""A process killed between the auto-sync's commit and the host's receiver: the outbox lets reconcile repair it."""

import signal
import subprocess
import sys

from multibackend.services.companies import ANNOUNCE_GRACE_SECONDS

from tests.helpers import EXAMPLE, SECRET, WEBHOOK, cli_env, run_sql

ACCOUNT = 401
# The production entry point (wsgi.py, settings from the environment) serving one delivery; the receiver kills it.
DELIVERY = f"""
from wsgi import app
app.test_client().post("{WEBHOOK}?token={SECRET}", json={{"id": {ACCOUNT}, "name": "Crashed Co"}})
raise SystemExit("the receiver did not crash the process")
"""


def vector_indexes_of(database_url: str) -> list[tuple]:
    return run_sql(database_url, "SELECT index_name FROM vector_indexes WHERE company_id = %s", (f"chatwoot_{ACCOUNT}",))


def test_a_crash_between_the_commit_and_the_receiver_is_repaired_by_reconcile(cli, database_name, database_url, redis_url):
    env = cli_env(database_name, redis_url, HOST_CRASH_IN_RECEIVER="1")
    crashed = subprocess.run([sys.executable, "-c", DELIVERY], cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=60)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    [(pk, status)] = run_sql(database_url, "SELECT id, provisioning_status FROM companies WHERE chatwoot_account_id = %s",
                             (str(ACCOUNT),))
    assert status == "ready"  # committed before the receiver ran
    assert vector_indexes_of(database_url) == []
    assert run_sql(database_url, "SELECT count(*) FROM chatwoot_tenant_announcements WHERE company_pk = %s", (pk,)) == [(1,)]

    early = cli("chatwoot", "reconcile")
    assert early.returncode == 0, early.stdout + early.stderr
    assert vector_indexes_of(database_url) == []  # within the grace period the writer may still be announcing

    run_sql(database_url, "UPDATE chatwoot_tenant_announcements SET created_at = now() - make_interval(secs => %s)"
                          " WHERE company_pk = %s", (ANNOUNCE_GRACE_SECONDS + 1, pk))
    repaired = cli("chatwoot", "reconcile")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "1 announced" in repaired.stdout
    assert vector_indexes_of(database_url) == [(f"chatwoot_{ACCOUNT}_documents",)]
    assert run_sql(database_url, "SELECT count(*) FROM chatwoot_tenant_announcements WHERE company_pk = %s", (pk,)) == [(0,)]
