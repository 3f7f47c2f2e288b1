-- Analytics: processed Kafka events, exactly-summed rollups, violations, anomalies, the alert outbox and
-- telemetry geofences. Plain tables in both flavours, so the same queries answer with and without
-- TimescaleDB.

-- Extra passage and reading columns the analyst API returns.
ALTER TABLE analytics.vehicle_passages
    ADD COLUMN IF NOT EXISTS wrong_way             boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS speed_uncertainty_kmh double precision,
    ADD COLUMN IF NOT EXISTS sample_count          integer,
    ADD COLUMN IF NOT EXISTS crossing_x_m          double precision,
    ADD COLUMN IF NOT EXISTS crossing_y_m          double precision,
    ADD COLUMN IF NOT EXISTS confidence            real;

ALTER TABLE analytics.telemetry_readings
    ADD COLUMN IF NOT EXISTS horizontal_accuracy_m double precision,
    ADD COLUMN IF NOT EXISTS measurements          jsonb;

-- Kafka records already applied (event-id header); inserted in the transaction that writes their outputs.
CREATE TABLE IF NOT EXISTS analytics.processed_events (
    event_id      text        PRIMARY KEY,
    processed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS processed_events_processed_at ON analytics.processed_events USING brin (processed_at);

-- Adds per-class count objects: {"car": 3} + {"car": 1, "bus": 2} = {"car": 4, "bus": 2}.
CREATE OR REPLACE FUNCTION analytics.add_counts(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_object_agg(key, total), '{}'::jsonb)
    FROM (SELECT key, sum(value::bigint) AS total
          FROM (SELECT * FROM jsonb_each_text(coalesce(a, '{}'::jsonb))
                UNION ALL
                SELECT * FROM jsonb_each_text(coalesce(b, '{}'::jsonb))) AS pairs
          GROUP BY key) AS sums
$$;

CREATE OR REPLACE AGGREGATE analytics.sum_counts(jsonb) (
    SFUNC = analytics.add_counts, STYPE = jsonb, INITCOND = '{}'
);

-- Rollups of traffic_metrics kept as sums (not averages), so any coarser bucket combines exactly; filled
-- from the raw rows actually inserted by each write, so replays never add twice.
CREATE TABLE IF NOT EXISTS analytics.traffic_rollup_1m (
    bucket           timestamptz      NOT NULL,
    camera_id        text             NOT NULL,
    lane             text             NOT NULL,
    zone             text             NOT NULL,
    vehicle_count    bigint           NOT NULL,
    counts_by_class  jsonb            NOT NULL,
    speed_sum        double precision NOT NULL,  -- sum of mean_speed_kmh * vehicle_count
    speed_weight     bigint           NOT NULL,  -- sum of vehicle_count where mean_speed_kmh is set
    p85_sum          double precision NOT NULL,  -- sum of p85_speed_kmh * vehicle_count
    p85_weight       bigint           NOT NULL,
    occupancy_sum    double precision NOT NULL,
    occupancy_n      integer          NOT NULL,
    headway_sum      double precision NOT NULL,  -- sum of headway_s * vehicle_count
    headway_weight   bigint           NOT NULL,
    congestion_max   smallint         NOT NULL,
    window_count     integer          NOT NULL,
    PRIMARY KEY (camera_id, lane, zone, bucket)
);

CREATE TABLE IF NOT EXISTS analytics.traffic_rollup_1h (LIKE analytics.traffic_rollup_1m INCLUDING ALL);

-- Violations and anomalies with their full proto (evidence included) for the analyst API.
CREATE TABLE IF NOT EXISTS analytics.violations (
    violation_id  text        PRIMARY KEY,
    kind          smallint    NOT NULL,
    severity      smallint    NOT NULL,
    camera_id     text        NOT NULL DEFAULT '',
    device_id     text        NOT NULL DEFAULT '',
    track_id      text        NOT NULL DEFAULT '',
    start_time    timestamptz NOT NULL,
    payload       bytea       NOT NULL,  -- serialized itsmesh.v1.Violation
    stored_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS violations_start_time ON analytics.violations (start_time DESC);
CREATE INDEX IF NOT EXISTS violations_camera_time ON analytics.violations (camera_id, start_time DESC);
CREATE INDEX IF NOT EXISTS violations_device_time ON analytics.violations (device_id, start_time DESC);

CREATE TABLE IF NOT EXISTS analytics.anomalies (
    anomaly_id         text        PRIMARY KEY,
    kind               smallint    NOT NULL,
    severity           smallint    NOT NULL,
    camera_id          text        NOT NULL,
    lane               text        NOT NULL DEFAULT '',
    window_start_time  timestamptz NOT NULL,
    payload            bytea       NOT NULL,  -- serialized itsmesh.v1.Anomaly
    stored_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS anomalies_window ON analytics.anomalies (window_start_time DESC);
CREATE INDEX IF NOT EXISTS anomalies_camera_window ON analytics.anomalies (camera_id, window_start_time DESC);

-- Transactional outbox towards the alert service: one row per violation or anomaly, written with it.
CREATE TABLE IF NOT EXISTS analytics.alert_outbox (
    outbox_id        bigserial   PRIMARY KEY,
    source_kind      text        NOT NULL,  -- 'violation' | 'anomaly'
    source_id        text        NOT NULL,
    request          bytea       NOT NULL,  -- serialized itsmesh.v1.RaiseAlertRequest
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    sent_at          timestamptz,
    UNIQUE (source_kind, source_id)
);
CREATE INDEX IF NOT EXISTS alert_outbox_pending ON analytics.alert_outbox (next_attempt_at) WHERE sent_at IS NULL;

-- Telemetry geofences (the proto is the record; a few columns are broken out for lookups).
CREATE TABLE IF NOT EXISTS analytics.geofences (
    geofence_id  text        PRIMARY KEY,
    device_ids   text[]      NOT NULL DEFAULT '{}',
    payload      bytea       NOT NULL,  -- serialized itsmesh.v1.Geofence
    etag         text        NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now()
);
