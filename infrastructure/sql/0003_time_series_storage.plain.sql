-- Plain PostgreSQL: BRIN indexes keep time-range scans cheap on append-mostly tables.
CREATE INDEX IF NOT EXISTS traffic_metrics_time_brin ON analytics.traffic_metrics USING brin (time);
CREATE INDEX IF NOT EXISTS vehicle_passages_time_brin ON analytics.vehicle_passages USING brin (time);
CREATE INDEX IF NOT EXISTS telemetry_readings_time_brin ON analytics.telemetry_readings USING brin (time);
CREATE INDEX IF NOT EXISTS vehicle_passages_camera_time ON analytics.vehicle_passages (camera_id, time DESC);
CREATE INDEX IF NOT EXISTS telemetry_readings_device_time ON analytics.telemetry_readings (device_id, time DESC);
