-- derbus cloud database, migration 002: one B-tree per partition, led by the series.
--
-- Before: the primary key (time, site_id, device_id, metric) plus readings_series_idx (site_id,
-- metric, device_id, time): two B-trees of four columns, three of them text, maintained for every
-- row. After: the primary key is (site_id, metric, device_id, time) — the same unique key (ON
-- CONFLICT (time, site_id, device_id, metric) infers it: the column order does not matter) and the
-- per-series index in one — and a BRIN index on time serves time-range scans across series (a
-- few pages per partition: it costs one pass over the rows to build). Every write maintains one
-- B-tree instead of two, and `cloud-sync import` builds a new month's index once, from sorted
-- input (see cloud_sync.cloud.SqlCloudStore.write_many).
--
-- Idempotent. On an existing database it rebuilds the key of every partition (a one-off, in
-- this migration's transaction).

ALTER TABLE readings DROP CONSTRAINT IF EXISTS readings_pkey;
ALTER TABLE readings ADD CONSTRAINT readings_pkey PRIMARY KEY (site_id, metric, device_id, time);
DROP INDEX IF EXISTS readings_series_idx;
CREATE INDEX IF NOT EXISTS readings_time_brin ON readings USING brin (time);

-- The partition of the month containing `month_start` (UTC): readings_yYYYYmMM. (Its first
-- version, in 001 until this migration, checked with to_regclass after the lock: a second writer
-- creating the same month waited for the first, then failed on "already exists".)
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

INSERT INTO schema_migrations (version) VALUES ('002_series_key') ON CONFLICT DO NOTHING;
