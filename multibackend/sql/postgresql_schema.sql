-- multibackend: Chatwoot auto-sync schema (PostgreSQL).
-- Safe to apply any number of times, also on an older database:
--   psql "$DATABASE_URL" < postgresql_schema.sql      or      flask --app wsgi chatwoot init-db
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

-- An older `companies` table (from the first setup guide, or the host backend's own) gets the missing columns;
-- its rows and its own columns are kept.
ALTER TABLE companies ADD COLUMN IF NOT EXISTS redis_prefix VARCHAR(80);
ALTER TABLE companies ADD COLUMN IF NOT EXISTS vectorstore_index VARCHAR(100);
ALTER TABLE companies ADD COLUMN IF NOT EXISTS provisioning_status VARCHAR(16) NOT NULL DEFAULT 'pending';
ALTER TABLE companies ADD COLUMN IF NOT EXISTS provisioning_error TEXT;
ALTER TABLE companies ADD COLUMN IF NOT EXISTS provisioning_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE companies ADD COLUMN IF NOT EXISTS next_provisioning_at TIMESTAMPTZ;
ALTER TABLE companies ADD COLUMN IF NOT EXISTS chatwoot_status VARCHAR(20) NOT NULL DEFAULT 'active';
ALTER TABLE companies ADD COLUMN IF NOT EXISTS created_at TIMESTAMPTZ NOT NULL DEFAULT now();
ALTER TABLE companies ADD COLUMN IF NOT EXISTS updated_at TIMESTAMPTZ NOT NULL DEFAULT now();
-- Only Chatwoot companies get tenant names; on a table the host writes too, the columns stay nullable so the
-- host's own inserts (which know nothing of them) keep working.
UPDATE companies SET redis_prefix = company_id || ':'
    WHERE redis_prefix IS NULL AND chatwoot_account_id IS NOT NULL;
UPDATE companies SET vectorstore_index = company_id || '_documents'
    WHERE vectorstore_index IS NULL AND chatwoot_account_id IS NOT NULL;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'companies'::regclass
                   AND conname = 'companies_chatwoot_account_id_key') THEN
        IF EXISTS (SELECT 1 FROM companies WHERE chatwoot_account_id IS NOT NULL
                   GROUP BY chatwoot_account_id HAVING count(*) > 1) THEN
            RAISE WARNING 'companies holds duplicate chatwoot_account_id rows: run `flask --app wsgi chatwoot dedupe --dry-run`, then without --dry-run';
        ELSE
            ALTER TABLE companies ADD CONSTRAINT companies_chatwoot_account_id_key UNIQUE (chatwoot_account_id);
        END IF;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'companies'::regclass
                   AND conname = 'companies_company_id_key')
       AND NOT EXISTS (SELECT 1 FROM companies GROUP BY company_id HAVING count(*) > 1) THEN
        ALTER TABLE companies ADD CONSTRAINT companies_company_id_key UNIQUE (company_id);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'companies'::regclass
                   AND conname = 'companies_provisioning_status_check') THEN
        ALTER TABLE companies ADD CONSTRAINT companies_provisioning_status_check
            CHECK (provisioning_status IN ('pending', 'ready', 'failed'));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'companies'::regclass
                   AND conname = 'companies_chatwoot_status_check') THEN
        ALTER TABLE companies ADD CONSTRAINT companies_chatwoot_status_check
            CHECK (chatwoot_status IN ('active', 'suspended', 'deletion_pending', 'deleted'));
    END IF;
END
$$;

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
