-- derbus cloud database, migration 001: the long-format `readings` table (see derbus.storage).
--
-- Applied by `cloud-sync migrate` (and by cloud_sync at start-up), and by the postgres image's
-- /docker-entrypoint-initdb.d on a fresh volume. Idempotent: safe to run again.
--
-- readings(time, site_id, device_id, metric, value): one row per numeric field of a telemetry
-- message, metric = <kind>.<field> (e.g. meter.p_kw). Unique on (time, site_id, device_id,
-- metric): cloud_sync inserts with ON CONFLICT DO NOTHING, so a re-sent batch never doubles a
-- row. The primary key leads with `time` and is the time index (range scans on time use it);
-- readings_series_idx serves per-series reads (feature engineering, forecaster).
--
-- Declarative partitioning by range on time, one partition per calendar month (UTC), created on
-- demand by readings_ensure_partition() for the months being written; rows of a month without
-- a partition land in readings_default and are moved into the month when it is created.

CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS readings (
    time      timestamptz      NOT NULL,
    site_id   varchar(100)     NOT NULL,
    device_id varchar(100)     NOT NULL,
    metric    varchar(100)     NOT NULL,
    value     double precision NOT NULL,
    CONSTRAINT readings_pkey PRIMARY KEY (time, site_id, device_id, metric)
) PARTITION BY RANGE (time);

CREATE TABLE IF NOT EXISTS readings_default PARTITION OF readings DEFAULT;

CREATE INDEX IF NOT EXISTS readings_series_idx ON readings (site_id, metric, device_id, time);

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
    IF to_regclass(part) IS NOT NULL THEN
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

INSERT INTO schema_migrations (version) VALUES ('001_readings') ON CONFLICT DO NOTHING;
