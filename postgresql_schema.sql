-- multibackend: Chatwoot auto-sync schema (PostgreSQL).
-- Safe to apply any number of times:  psql "$DATABASE_URL" < postgresql_schema.sql
-- or:  flask --app wsgi chatwoot init-db
-- tests/test_schema.py proves this file and multibackend/models describe the same tables.

BEGIN;
-- serialises concurrent applications (several release steps at once)
SELECT pg_advisory_xact_lock(4242001);

CREATE TABLE IF NOT EXISTS companies (
    id                   BIGSERIAL PRIMARY KEY,
    company_id           VARCHAR(64)  NOT NULL,
    company_name         VARCHAR(255) NOT NULL,
    chatwoot_account_id  VARCHAR(50),
    redis_prefix         VARCHAR(80)  NOT NULL,
    vectorstore_index    VARCHAR(100) NOT NULL,
    provisioning_status  VARCHAR(16)  NOT NULL DEFAULT 'pending',
    provisioning_error   TEXT,
    created_at           TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT companies_company_id_key UNIQUE (company_id),
    -- one company per Chatwoot account: the webhook's INSERT ... ON CONFLICT relies on it
    CONSTRAINT companies_chatwoot_account_id_key UNIQUE (chatwoot_account_id),
    CONSTRAINT companies_provisioning_status_check
        CHECK (provisioning_status IN ('pending', 'ready', 'failed'))
);

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

CREATE TABLE IF NOT EXISTS chatwoot_webhook_rejections (
    code              VARCHAR(40) PRIMARY KEY,
    count             BIGINT      NOT NULL DEFAULT 0,
    last_rejected_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

COMMIT;
