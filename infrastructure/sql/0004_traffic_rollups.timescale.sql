-- itsmesh:no-transaction
-- 1-minute and 1-hour rollups as continuous aggregates; same names and columns as the plain views.
CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.traffic_metrics_1m
WITH (timescaledb.continuous) AS
SELECT time_bucket(INTERVAL '1 minute', time) AS bucket, camera_id, lane, zone,
       sum(vehicle_count)::bigint AS vehicle_count,
       sum(mean_speed_kmh * vehicle_count) / nullif(sum(vehicle_count) FILTER (WHERE mean_speed_kmh IS NOT NULL), 0)
           AS mean_speed_kmh,
       max(p85_speed_kmh) AS max_p85_speed_kmh,
       avg(occupancy) AS occupancy
FROM analytics.traffic_metrics
GROUP BY 1, 2, 3, 4
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.traffic_metrics_1h
WITH (timescaledb.continuous) AS
SELECT time_bucket(INTERVAL '1 hour', time) AS bucket, camera_id, lane, zone,
       sum(vehicle_count)::bigint AS vehicle_count,
       sum(mean_speed_kmh * vehicle_count) / nullif(sum(vehicle_count) FILTER (WHERE mean_speed_kmh IS NOT NULL), 0)
           AS mean_speed_kmh,
       max(p85_speed_kmh) AS max_p85_speed_kmh,
       avg(occupancy) AS occupancy
FROM analytics.traffic_metrics
GROUP BY 1, 2, 3, 4
WITH NO DATA;

SELECT add_continuous_aggregate_policy('analytics.traffic_metrics_1m', start_offset => INTERVAL '1 hour',
    end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE);
SELECT add_continuous_aggregate_policy('analytics.traffic_metrics_1h', start_offset => INTERVAL '3 days',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '15 minutes', if_not_exists => TRUE);
