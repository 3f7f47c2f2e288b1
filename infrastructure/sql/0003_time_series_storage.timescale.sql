-- itsmesh:no-transaction
-- TimescaleDB: hypertables, compression and retention. (Continuous aggregates follow in 0004.)
SELECT create_hypertable('analytics.traffic_metrics', by_range('time', INTERVAL '1 day'), if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('analytics.vehicle_passages', by_range('time', INTERVAL '1 day'), if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('analytics.telemetry_readings', by_range('time', INTERVAL '1 day'), if_not_exists => TRUE, migrate_data => TRUE);

ALTER TABLE analytics.traffic_metrics SET (timescaledb.compress, timescaledb.compress_segmentby = 'camera_id');
ALTER TABLE analytics.vehicle_passages SET (timescaledb.compress, timescaledb.compress_segmentby = 'camera_id');
ALTER TABLE analytics.telemetry_readings SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id');
SELECT add_compression_policy('analytics.traffic_metrics', INTERVAL '7 days', if_not_exists => TRUE);
SELECT add_compression_policy('analytics.vehicle_passages', INTERVAL '7 days', if_not_exists => TRUE);
SELECT add_compression_policy('analytics.telemetry_readings', INTERVAL '7 days', if_not_exists => TRUE);
SELECT add_retention_policy('analytics.traffic_metrics', INTERVAL '400 days', if_not_exists => TRUE);
SELECT add_retention_policy('analytics.vehicle_passages', INTERVAL '90 days', if_not_exists => TRUE);
SELECT add_retention_policy('analytics.telemetry_readings', INTERVAL '90 days', if_not_exists => TRUE);
