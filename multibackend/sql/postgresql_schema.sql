-- multibackend: Chatwoot auto-sync schema (PostgreSQL), for a NEW database:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f postgresql_schema.sql
-- A database that already has a `companies` table (an older version's, the setup guide's, a host backend's) is
-- upgraded by `flask --app wsgi chatwoot init-db` instead: it adds what is missing online, step by step, without
-- holding a lock across work (multibackend/schema_upgrade.py). init-db also creates a new database by itself.
-- (shipped inside the package as multibackend/sql/postgresql_schema.sql; the repository's root file links to it)
-- tests/test_schema.py proves this file and multibackend/models describe the same tables.

BEGIN;
-- serialises concurrent applications (several release steps at once)
SELECT pg_advisory_xact_lock(4242001);

CREATE TABLE IF NOT EXISTS companies (
    id                    BIGSERIAL PRIMARY KEY,
    company_id            VARCHAR(64)  NOT NULL,
    company_name          VARCHAR(255) NOT NULL,
    chatwoot_account_id   VARCHAR(50),
    redis_prefix          VARCHAR(80)  NOT NULL,
    vectorstore_index     VARCHAR(100) NOT NULL,
    provisioning_status   VARCHAR(16)  NOT NULL DEFAULT 'pending',
    provisioning_error    TEXT,
    provisioning_attempts INTEGER      NOT NULL DEFAULT 0,
    next_provisioning_at  TIMESTAMPTZ,
    chatwoot_status       VARCHAR(20)  NOT NULL DEFAULT 'active',
    created_at            TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT companies_company_id_key UNIQUE (company_id),
    -- one company per Chatwoot account: the webhook's INSERT ... ON CONFLICT relies on it
    CONSTRAINT companies_chatwoot_account_id_key UNIQUE (chatwoot_account_id),
    CONSTRAINT companies_provisioning_status_check
        CHECK (provisioning_status IN ('pending', 'ready', 'failed')),
    CONSTRAINT companies_chatwoot_status_check
        CHECK (chatwoot_status IN ('active', 'suspended', 'deletion_pending', 'deleted'))
);

-- what the reconciler scans for: companies whose provisioning is not finished
CREATE INDEX IF NOT EXISTS ix_companies_unfinished_provisioning ON companies (next_provisioning_at)
    WHERE provisioning_status <> 'ready';

CREATE TABLE IF NOT EXISTS chatwoot_sync_events (
    id                   BIGSERIAL PRIMARY KEY,
    chatwoot_account_id  VARCHAR(50)  NOT NULL,
    company_id           VARCHAR(64),
    outcome              VARCHAR(16)  NOT NULL,
    created              BOOLEAN      NOT NULL DEFAULT false,
    latency_ms           DOUBLE PRECISION NOT NULL,
    error                TEXT,
    created_at           TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT chatwoot_sync_events_outcome_check CHECK (outcome IN ('success', 'failed'))
);

CREATE INDEX IF NOT EXISTS ix_chatwoot_sync_events_created_at ON chatwoot_sync_events (created_at);
-- recent_errors reads the newest few rows with an error: O(10) however long the history
CREATE INDEX IF NOT EXISTS ix_chatwoot_sync_events_errors ON chatwoot_sync_events (created_at)
    WHERE error IS NOT NULL;

-- running totals of every sync event up to through_event_id, so metrics never scan the history
CREATE TABLE IF NOT EXISTS chatwoot_sync_totals (
    id                SMALLINT PRIMARY KEY,
    through_event_id  BIGINT NOT NULL DEFAULT 0,
    total_syncs       BIGINT NOT NULL DEFAULT 0,
    success_count     BIGINT NOT NULL DEFAULT 0,
    latency_sum_ms    DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_sync         TIMESTAMPTZ,
    CONSTRAINT chatwoot_sync_totals_single_row CHECK (id = 1)
);

-- outbox: tenant_provisioned is owed for these companies (written in the commit that made them ready, removed
-- once the signal was sent; the reconciler sends what a crashed process still owed)
CREATE TABLE IF NOT EXISTS chatwoot_tenant_announcements (
    company_pk  BIGINT      PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- the company tab (a Chatwoot Dashboard App) made in each Chatwoot account: which dashboard_apps row is ours
CREATE TABLE IF NOT EXISTS chatwoot_dashboard_tabs (
    chatwoot_account_id  BIGINT       PRIMARY KEY,
    dashboard_app_id     BIGINT       NOT NULL,
    title                VARCHAR(255) NOT NULL,
    url                  TEXT         NOT NULL,
    updated_at           TIMESTAMPTZ  NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS chatwoot_webhook_rejections (
    code              VARCHAR(40) PRIMARY KEY,
    count             BIGINT      NOT NULL DEFAULT 0,
    last_rejected_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

COMMIT;
