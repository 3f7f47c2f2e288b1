-- Transactional outbox of the camera registry (streaming service, DESIGN §3/§4).

-- A camera change and its CameraConfigChanged event commit together: the registry writes the event here
-- in the transaction that changes streaming.cameras, and a relay publishes the rows to Kafka in id order
-- and marks them published, so a Kafka outage delays config events and loses none.
CREATE TABLE IF NOT EXISTS streaming.outbox (
    id            bigserial   PRIMARY KEY,
    topic         text        NOT NULL,
    key           text        NOT NULL,
    event_id      text        NOT NULL,
    payload       bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
-- What the relay reads: the unpublished rows, oldest first.
CREATE INDEX IF NOT EXISTS outbox_unpublished ON streaming.outbox (id) WHERE published_at IS NULL;
-- What the pruning of published rows reads.
CREATE INDEX IF NOT EXISTS outbox_published_at ON streaming.outbox (published_at)
    WHERE published_at IS NOT NULL;
