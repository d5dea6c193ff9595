-- derbus cloud database, migration 002: readings_ensure_partition(), which creates a month's
-- partition, replaced (001 keeps its first version: migrations are only ever added to).
--
-- The first version checked for the partition with to_regclass() after taking its advisory lock.
-- to_regclass can answer from a catalog cache that taking an advisory lock does not refresh, so
-- a second writer creating the same month waited for the first, then failed on "relation already
-- exists". This version reads pg_class in a new statement after the lock. `cloud-sync import`
-- takes the same lock before it attaches a month it built (cloud_sync.cloud.SqlCloudStore.
-- write_many).
--
-- Idempotent (CREATE OR REPLACE).

-- The partition of the month containing `month_start` (UTC): readings_yYYYYmMM.
CREATE OR REPLACE FUNCTION readings_ensure_partition(month_start timestamptz)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    lo   timestamptz := date_trunc('month', month_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    hi   timestamptz := (date_trunc('month', month_start AT TIME ZONE 'UTC') + interval '1 month')
                        AT TIME ZONE 'UTC';
    part text := 'readings_y' || to_char(month_start AT TIME ZONE 'UTC', 'YYYY"m"MM');
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN part;
    END IF;
    -- Serialise concurrent creators of partitions (several writers may start together).
    PERFORM pg_advisory_xact_lock(hashtext('readings_ensure_partition'));
    -- pg_class read by a new statement: to_regclass may answer from a cache that taking an
    -- advisory lock does not refresh, and miss a partition another writer just committed
    IF EXISTS (SELECT 1 FROM pg_class WHERE relname = part
               AND relnamespace = current_schema()::regnamespace) THEN
        RETURN part;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE readings INCLUDING DEFAULTS)', part);
    -- Rows of this month already in the default partition move into the new one, so that
    -- attaching it cannot fail on the default partition's constraint.
    EXECUTE format(
        'WITH moved AS (DELETE FROM readings_default WHERE time >= %L AND time < %L RETURNING *) '
        'INSERT INTO %I SELECT * FROM moved', lo, hi, part);
    EXECUTE format('ALTER TABLE readings ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   part, lo, hi);
    RETURN part;
END;
$$;

INSERT INTO schema_migrations (version) VALUES ('002_ensure_partition') ON CONFLICT DO NOTHING;
