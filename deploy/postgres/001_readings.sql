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

-- readings_ensure_partition(month_start), which creates a month's partition, is defined in 002
-- (its first version stood here; 002 replaces it, so it is stated once).

INSERT INTO schema_migrations (version) VALUES ('001_readings') ON CONFLICT DO NOTHING;
