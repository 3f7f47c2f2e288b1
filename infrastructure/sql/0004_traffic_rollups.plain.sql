-- Plain PostgreSQL: the same rollups as views over date_bin, so queries read identical names and columns.
CREATE OR REPLACE VIEW analytics.traffic_metrics_1m AS
SELECT date_bin(INTERVAL '1 minute', time, TIMESTAMPTZ '2000-01-01') AS bucket, camera_id, lane, zone,
       sum(vehicle_count)::bigint AS vehicle_count,
       sum(mean_speed_kmh * vehicle_count) / nullif(sum(vehicle_count) FILTER (WHERE mean_speed_kmh IS NOT NULL), 0)
           AS mean_speed_kmh,
       max(p85_speed_kmh) AS max_p85_speed_kmh,
       avg(occupancy) AS occupancy
FROM analytics.traffic_metrics
GROUP BY 1, 2, 3, 4;

CREATE OR REPLACE VIEW analytics.traffic_metrics_1h AS
SELECT date_bin(INTERVAL '1 hour', time, TIMESTAMPTZ '2000-01-01') AS bucket, camera_id, lane, zone,
       sum(vehicle_count)::bigint AS vehicle_count,
       sum(mean_speed_kmh * vehicle_count) / nullif(sum(vehicle_count) FILTER (WHERE mean_speed_kmh IS NOT NULL), 0)
           AS mean_speed_kmh,
       max(p85_speed_kmh) AS max_p85_speed_kmh,
       avg(occupancy) AS occupancy
FROM analytics.traffic_metrics
GROUP BY 1, 2, 3, 4;
