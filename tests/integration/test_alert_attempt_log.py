"""Delivery attempts written in batches to real PostgreSQL: every attempt and its delivery's new state land,
and one attempt the database refuses does not take the others of its batch down with it."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import asyncpg
import pytest

from services.alert.attempt_log import AttemptLog
from services.alert.fingerprint import fingerprint
from services.alert.store import Attempt, DeliveryStore
from tests.integration.alert_host import MovableClock, alert_host, new_camera

pytestmark = pytest.mark.integration

SUCCEEDED, RETRYING = 3, 2
RECEIVER = f"attempt-log-{uuid.uuid4().hex[:8]}"
RETRY_IN = timedelta(days=1)  # a retry nobody makes while the tests run


async def _delivery(pool: asyncpg.Pool, now) -> uuid.UUID:
    alert_id, delivery_id = uuid.uuid4(), uuid.uuid4()
    labels = {"kind": "camera_offline", "camera_id": new_camera()}
    await pool.execute(
        "INSERT INTO alert.alerts (alert_id, fingerprint, labels, severity, status, last_client_alert_id,"
        " first_seen_time, last_seen_time) VALUES ($1, $2, $3, 4, 1, $4, $5, $5)",
        alert_id,
        fingerprint(labels),
        json.dumps(labels),
        uuid.uuid4().hex,
        now,
    )
    await pool.execute(
        "INSERT INTO alert.deliveries (delivery_id, alert_id, receiver, receiver_type, notification_type,"
        " state, next_attempt_time) VALUES ($1, $2, $4, 1, 1, 1, $3)",
        delivery_id,
        alert_id,
        now + timedelta(days=1),  # leased, as the worker holds it while sending: nobody else claims it
        RECEIVER,  # configured nowhere: no other test's receiver ever gets it
    )
    return delivery_id


def _attempt(delivery_id: uuid.UUID, now, number: int = 1, state: int = SUCCEEDED) -> Attempt:
    later = now + RETRY_IN if state == RETRYING else None
    error = "HTTP 503: busy" if state == RETRYING else ""
    return Attempt(delivery_id, number, now, 1 if state == SUCCEEDED else 2, 1.5, 200, error, state, later)


async def test_attempts_that_finish_together_are_stored_with_their_states(infra):
    clock = MovableClock()
    async with alert_host(infra, clock):  # migrated
        pool = await asyncpg.create_pool(infra.database_url, min_size=1, max_size=2)
        try:
            log = AttemptLog(DeliveryStore(pool))
            ids = [await _delivery(pool, clock.now) for _ in range(5)]
            states = [SUCCEEDED, RETRYING, SUCCEEDED, RETRYING, SUCCEEDED]
            await asyncio.gather(
                *(log.record(_attempt(i, clock.now, state=s)) for i, s in zip(ids, states, strict=True))
            )
            rows = await pool.fetch(
                "SELECT d.delivery_id, d.state, d.finish_time, d.next_attempt_time, a.error"
                " FROM alert.deliveries d JOIN alert.delivery_attempts a USING (delivery_id)"
                " WHERE d.delivery_id = ANY($1::uuid[])",
                ids,
            )
            by_id = {r["delivery_id"]: r for r in rows}
            assert len(by_id) == 5
            for delivery_id, state in zip(ids, states, strict=True):
                row = by_id[delivery_id]
                assert row["state"] == state
                if state == SUCCEEDED:
                    assert row["finish_time"] == clock.now
                    assert row["next_attempt_time"] is None
                else:
                    assert row["finish_time"] is None
                    assert row["next_attempt_time"] == clock.now + RETRY_IN
                    assert row["error"] == "HTTP 503: busy"
        finally:
            await pool.execute(
                "DELETE FROM alert.alerts WHERE alert_id IN"
                " (SELECT alert_id FROM alert.deliveries WHERE receiver = $1)",
                RECEIVER,
            )
            await pool.close()


async def test_an_attempt_the_database_refuses_fails_alone(infra):
    clock = MovableClock()
    async with alert_host(infra, clock):
        pool = await asyncpg.create_pool(infra.database_url, min_size=1, max_size=2)
        try:
            log = AttemptLog(DeliveryStore(pool))
            good = [await _delivery(pool, clock.now) for _ in range(3)]
            twice = await _delivery(pool, clock.now)
            await log.record(_attempt(twice, clock.now))
            results = await asyncio.gather(
                log.record(_attempt(good[0], clock.now)),
                log.record(_attempt(twice, clock.now)),  # attempt 1 again: the primary key refuses it
                log.record(_attempt(good[1], clock.now)),
                log.record(_attempt(good[2], clock.now)),
                return_exceptions=True,
            )
            assert [type(r) for r in results] == [
                type(None),
                asyncpg.UniqueViolationError,
                type(None),
                type(None),
            ]
            stored = await pool.fetchval(
                "SELECT count(*) FROM alert.delivery_attempts WHERE delivery_id = ANY($1::uuid[])", good
            )
            assert stored == 3
            await log.drain()
        finally:
            await pool.execute(
                "DELETE FROM alert.alerts WHERE alert_id IN"
                " (SELECT alert_id FROM alert.deliveries WHERE receiver = $1)",
                RECEIVER,
            )
            await pool.close()
