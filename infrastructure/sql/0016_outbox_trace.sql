-- The W3C traceparent of the Kafka record whose processing produced an alert outbox row, so that the relay
-- raises the alert in the same trace (streaming → Kafka → analytics → alert). NULL when there is none: a
-- row produced by a flush rather than a record, a record sent without trace context, or an older row.
ALTER TABLE analytics.alert_outbox ADD COLUMN IF NOT EXISTS traceparent text;
