-- Time-series tables written by analytics with COPY. Natural keys include the time column so that
-- they stay valid unique indexes on a hypertable, and make replayed Kafka events idempotent.

CREATE TABLE IF NOT EXISTS analytics.traffic_metrics (
    time              timestamptz      NOT NULL,  -- start of the aggregation window
    camera_id         text             NOT NULL,
    lane              text             NOT NULL DEFAULT '',  -- '' = all lanes of the camera
    zone              text             NOT NULL DEFAULT '',  -- '' = whole view
    window_s          integer          NOT NULL,  -- window length in seconds (10 by default)
    vehicle_count     integer          NOT NULL,
    counts_by_class   jsonb            NOT NULL DEFAULT '{}'::jsonb,
    mean_speed_kmh    double precision,
    p85_speed_kmh     double precision,
    occupancy         double precision,  -- fraction of the window a vehicle was present, 0..1
    headway_s         double precision,  -- mean time gap between consecutive vehicles
    congestion_level  smallint         NOT NULL DEFAULT 0,  -- 0 free flow .. 4 stop-and-go
    PRIMARY KEY (camera_id, lane, zone, time)
);

CREATE TABLE IF NOT EXISTS analytics.vehicle_passages (
    time            timestamptz      NOT NULL,  -- when the vehicle crossed the counting line
    camera_id       text             NOT NULL,
    event_id        uuid             NOT NULL,  -- idempotency key of the passage
    track_id        text             NOT NULL,
    line_id         text             NOT NULL,
    lane            text             NOT NULL DEFAULT '',
    direction       text             NOT NULL DEFAULT '',
    object_class    text             NOT NULL,
    speed_kmh       double precision,
    entry_time      timestamptz,
    exit_time       timestamptz,
    PRIMARY KEY (camera_id, event_id, time)
);

CREATE TABLE IF NOT EXISTS analytics.telemetry_readings (
    time         timestamptz      NOT NULL,  -- device capture time
    device_id    text             NOT NULL,
    seq          bigint           NOT NULL,
    lat          double precision NOT NULL,
    lon          double precision NOT NULL,
    speed_kmh    double precision,
    heading_deg  double precision,
    event_id     uuid             NOT NULL,
    PRIMARY KEY (device_id, seq, time)
);
