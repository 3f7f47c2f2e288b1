-- Alerts, raises, silences, deliveries and routing state (alert service, DESIGN §7).
-- Enum columns hold the itsmesh.v1 proto enum numbers (Severity, AlertStatus, DeliveryState, ...).

-- One row per deduplicated alert. At most one open (not resolved) alert per fingerprint: a repeat of
-- an open alert updates it; a raise after resolution opens a new alert with the same fingerprint.
CREATE TABLE IF NOT EXISTS alert.alerts (
    alert_id              uuid        PRIMARY KEY,
    fingerprint           text        NOT NULL,
    labels                jsonb       NOT NULL,
    annotations           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    severity              smallint    NOT NULL,
    status                smallint    NOT NULL,
    source                text        NOT NULL DEFAULT '',
    last_client_alert_id  text        NOT NULL,
    occurrence_count      bigint      NOT NULL DEFAULT 1,
    first_seen_time       timestamptz NOT NULL,
    last_seen_time        timestamptz NOT NULL,
    ends_at               timestamptz,
    acknowledge_time      timestamptz,
    acknowledged_by       text        NOT NULL DEFAULT '',
    acknowledge_comment   text        NOT NULL DEFAULT '',
    resolve_time          timestamptz,
    resolved_by           text        NOT NULL DEFAULT '',
    resolve_comment       text        NOT NULL DEFAULT '',
    group_key             text        NOT NULL DEFAULT '',
    -- Decided when the alert fired: fingerprints of the alerts inhibiting it, and whether a mute
    -- interval of its route was active (silences are matched at read time instead).
    inhibited_by          text[]      NOT NULL DEFAULT '{}',
    muted                 boolean     NOT NULL DEFAULT false,
    escalation_policy     text        NOT NULL DEFAULT '',
    escalation_level      integer     NOT NULL DEFAULT 0,
    next_escalation_time  timestamptz,
    evidence              bytea,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
-- 3 = ALERT_STATUS_RESOLVED.
CREATE UNIQUE INDEX IF NOT EXISTS alerts_open_fingerprint ON alert.alerts (fingerprint) WHERE status <> 3;
CREATE INDEX IF NOT EXISTS alerts_last_seen ON alert.alerts (last_seen_time DESC, alert_id);
CREATE INDEX IF NOT EXISTS alerts_first_seen ON alert.alerts (first_seen_time);
CREATE INDEX IF NOT EXISTS alerts_labels ON alert.alerts USING gin (labels);
-- What the escalation worker polls: firing alerts with an escalation step pending (1 = FIRING).
CREATE INDEX IF NOT EXISTS alerts_escalation_due ON alert.alerts (next_escalation_time) WHERE status = 1;

-- Every processed client_alert_id, so that a replayed RaiseAlert changes nothing.
CREATE TABLE IF NOT EXISTS alert.raises (
    client_alert_id  text        PRIMARY KEY,
    alert_id         uuid        NOT NULL REFERENCES alert.alerts (alert_id) ON DELETE CASCADE,
    outcome          smallint    NOT NULL,
    suppressed       boolean     NOT NULL DEFAULT false,
    raised_at        timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS raises_raised_at ON alert.raises (raised_at);
CREATE INDEX IF NOT EXISTS raises_alert ON alert.raises (alert_id);

-- Silences: `matchers` is a JSON array of {"name", "value", "type"} (type = LabelMatchType number).
-- Deleting a silence sets end_time to the deletion time; rows are never removed.
CREATE TABLE IF NOT EXISTS alert.silences (
    silence_id  uuid        PRIMARY KEY,
    matchers    jsonb       NOT NULL,
    start_time  timestamptz NOT NULL,
    end_time    timestamptz NOT NULL,
    created_by  text        NOT NULL,
    comment     text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (end_time >= start_time)
);
CREATE INDEX IF NOT EXISTS silences_window ON alert.silences (end_time, start_time);

-- The name the typed severity has as the matcher label `severity`.
CREATE OR REPLACE FUNCTION alert.severity_name(severity smallint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (ARRAY['info', 'low', 'medium', 'high', 'critical'])[severity]
$$;

-- True when every matcher of `matchers` holds for `labels` (a missing label equals ""). Regular
-- expressions are anchored at both ends, as the contract says; the server validates them at the edge.
CREATE OR REPLACE FUNCTION alert.labels_match(matchers jsonb, labels jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(bool_and(
        CASE (m ->> 'type')::int
            WHEN 2 THEN coalesce(labels ->> (m ->> 'name'), '') <> (m ->> 'value')
            WHEN 3 THEN coalesce(labels ->> (m ->> 'name'), '') ~ ('^(?:' || (m ->> 'value') || ')$')
            WHEN 4 THEN coalesce(labels ->> (m ->> 'name'), '') !~ ('^(?:' || (m ->> 'value') || ')$')
            ELSE coalesce(labels ->> (m ->> 'name'), '') = (m ->> 'value')
        END), true)
    FROM jsonb_array_elements(matchers) AS m
$$;

-- One notification of one alert to one receiver; its attempts are in delivery_attempts.
CREATE TABLE IF NOT EXISTS alert.deliveries (
    delivery_id        uuid        PRIMARY KEY,
    alert_id           uuid        NOT NULL REFERENCES alert.alerts (alert_id) ON DELETE CASCADE,
    group_key          text        NOT NULL DEFAULT '',
    receiver           text        NOT NULL,
    receiver_type      smallint    NOT NULL,
    notification_type  smallint    NOT NULL,
    escalation_level   integer     NOT NULL DEFAULT 0,
    state              smallint    NOT NULL,
    payload            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    next_attempt_time  timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    finish_time        timestamptz
);
CREATE INDEX IF NOT EXISTS deliveries_alert ON alert.deliveries (alert_id, created_at DESC);
-- 1 = PENDING, 2 = RETRYING: what the delivery worker polls.
CREATE INDEX IF NOT EXISTS deliveries_due ON alert.deliveries (next_attempt_time) WHERE state IN (1, 2);

CREATE TABLE IF NOT EXISTS alert.delivery_attempts (
    delivery_id       uuid             NOT NULL REFERENCES alert.deliveries (delivery_id) ON DELETE CASCADE,
    attempt_number    integer          NOT NULL,
    attempt_time      timestamptz      NOT NULL,
    outcome           smallint         NOT NULL,
    latency_ms        double precision NOT NULL,
    http_status_code  integer          NOT NULL DEFAULT 0,
    error             text             NOT NULL DEFAULT '',
    PRIMARY KEY (delivery_id, attempt_number)
);

-- Notification state of each alert group (route + group_by values), so timing survives a restart.
CREATE TABLE IF NOT EXISTS alert.groups (
    group_key         text        PRIMARY KEY,
    receiver          text        NOT NULL,
    group_labels      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    last_notify_time  timestamptz,
    next_notify_time  timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
