-- Camera registry and frame ingest progress (streaming service, DESIGN §7).

-- One row per registered camera. `config` is the serialized itsmesh.v1.Camera (the contract is the
-- schema); the columns beside it are what queries filter and order by.
CREATE TABLE IF NOT EXISTS streaming.cameras (
    camera_id       text        PRIMARY KEY,
    config          bytea       NOT NULL,
    labels          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    disabled        boolean     NOT NULL DEFAULT false,
    config_version  bigint      NOT NULL DEFAULT 1,
    etag            text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cameras_labels ON streaming.cameras USING gin (labels);

-- Durable high-water mark per camera: every frame with a sequence up to and including
-- acked_through_sequence is settled (its event acknowledged by Kafka, or rejected). Written only after
-- the Kafka acknowledgement, so a frame at or below it is a duplicate and is never republished.
CREATE TABLE IF NOT EXISTS streaming.frame_progress (
    camera_id               text        PRIMARY KEY,
    acked_through_sequence  bigint      NOT NULL,
    last_capture_time       timestamptz,
    updated_at              timestamptz NOT NULL DEFAULT now()
);
