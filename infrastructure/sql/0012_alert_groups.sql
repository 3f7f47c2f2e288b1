-- Notification batching per alert group, suppressed alerts awaiting notification, and a per-alert
-- revision order for cross-instance WatchAlerts (alert service, issue 7).

-- Group timing (Alertmanager's group_wait / group_interval / repeat_interval), kept per group so a
-- restarted or different instance flushes the group on time.
ALTER TABLE alert.groups ADD COLUMN IF NOT EXISTS receiver_type smallint NOT NULL DEFAULT 1;
ALTER TABLE alert.groups ADD COLUMN IF NOT EXISTS changed boolean NOT NULL DEFAULT true;
ALTER TABLE alert.groups ADD COLUMN IF NOT EXISTS group_wait_s double precision NOT NULL DEFAULT 30;
ALTER TABLE alert.groups ADD COLUMN IF NOT EXISTS group_interval_s double precision NOT NULL DEFAULT 300;
ALTER TABLE alert.groups ADD COLUMN IF NOT EXISTS repeat_interval_s double precision NOT NULL DEFAULT 14400;
-- What the group flusher polls.
CREATE INDEX IF NOT EXISTS groups_next_notify ON alert.groups (next_notify_time);

-- The alerts of each group; `notified` = what the group last told about the alert
-- (0 = nothing yet, 1 = firing). Resolved alerts leave the group once their resolution went out.
CREATE TABLE IF NOT EXISTS alert.group_members (
    group_key  text        NOT NULL REFERENCES alert.groups (group_key) ON DELETE CASCADE,
    alert_id   uuid        NOT NULL REFERENCES alert.alerts (alert_id) ON DELETE CASCADE,
    notified   smallint    NOT NULL DEFAULT 0,
    joined_at  timestamptz NOT NULL,
    PRIMARY KEY (group_key, alert_id)
);
CREATE INDEX IF NOT EXISTS group_members_alert ON alert.group_members (alert_id);

-- A grouped notification carries several alerts: each one's delivery history shows it.
CREATE TABLE IF NOT EXISTS alert.delivery_alerts (
    delivery_id  uuid NOT NULL REFERENCES alert.deliveries (delivery_id) ON DELETE CASCADE,
    alert_id     uuid NOT NULL REFERENCES alert.alerts (alert_id) ON DELETE CASCADE,
    PRIMARY KEY (delivery_id, alert_id)
);
CREATE INDEX IF NOT EXISTS delivery_alerts_alert ON alert.delivery_alerts (alert_id);

-- An open alert that fired silenced, inhibited or muted and has not been notified since: rechecked
-- until its suppression ends, then notified.
ALTER TABLE alert.alerts ADD COLUMN IF NOT EXISTS notify_pending boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS alerts_notify_pending ON alert.alerts (alert_id) WHERE notify_pending;

-- updated_at strictly increases with every change of a row (row locks order the updates), so
-- (alert_id, update_time) orders and deduplicates the changes watchers receive from any instance.
CREATE OR REPLACE FUNCTION alert.bump_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := greatest(NEW.updated_at, OLD.updated_at + interval '1 microsecond');
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS alerts_bump_updated_at ON alert.alerts;
CREATE TRIGGER alerts_bump_updated_at BEFORE UPDATE ON alert.alerts
    FOR EACH ROW EXECUTE FUNCTION alert.bump_updated_at();
