"""Instance records and the last-known-endpoints table, driven by a fake clock."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.endpoints import (
    NOT_SERVING,
    SERVING,
    EndpointTable,
    Instance,
    Sighting,
    decode_record,
    encode_record,
    renewed_at,
)
from mesh.testing import FakeClock

LEASE = 10.0


def inst(instance_id: str, service: str = "echo", **changes: Any) -> Instance:
    port = 50000 + sum(map(ord, instance_id)) % 10000
    base = Instance(service, instance_id, f"127.0.0.1:{port}", version="1.0", started_at=1.0)
    return dataclasses.replace(base, **changes)


def seen(instance: Instance, renewed: float) -> Sighting:
    return Sighting(instance, renewed)


def ids(instances: list[Instance] | tuple[Instance, ...]) -> list[str]:
    return [i.instance_id for i in instances]


# --- Instance ---------------------------------------------------------------------------------------------


def test_instance_round_trips_through_json():
    original = inst("a", weight=3, zone="eu-1", health=NOT_SERVING, metadata={"pod": "p1"})
    assert Instance.from_json(original.to_json()) == original
    assert Instance.from_json(original.to_json().encode()) == original


def test_instance_json_ignores_unknown_fields_and_fills_defaults():
    raw = json.dumps({"service": "echo", "instance_id": "a", "address": "h:1", "future": 1})
    instance = Instance.from_json(raw)
    assert (instance.zone, instance.weight, instance.health, instance.metadata) == ("local", 1, SERVING, {})


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[]",
        json.dumps({"service": "echo", "address": "h:1"}),
        json.dumps({"service": "echo", "instance_id": "a", "address": "nohost"}),
        json.dumps({"service": "echo", "instance_id": "a", "address": "h:1", "health": "MAYBE"}),
        json.dumps({"service": "echo", "instance_id": "a", "address": "h:1", "weight": -1}),
        json.dumps({"service": "echo", "instance_id": "a", "address": "h:1", "metadata": [1]}),
        json.dumps({"service": "a:b", "instance_id": "a", "address": "h:1"}),
    ],
)
def test_malformed_instance_records_raise_value_error(raw: str):
    with pytest.raises(ValueError, match=r"instance|address|health|weight|service"):
        Instance.from_json(raw)


def test_instance_is_hashable_and_its_metadata_is_a_private_copy():
    labels = {"pod": "p1"}
    instance = inst("a", metadata=labels)
    labels["pod"] = "changed"
    assert instance.metadata == {"pod": "p1"}
    assert hash(instance) == hash(inst("a", metadata={"pod": "other"}))


def test_record_carries_the_lease_length_beside_the_instance():
    instance = inst("a")
    assert decode_record(encode_record(instance, 2.5)) == (instance, 2.5)
    assert decode_record(instance.to_json()) == (instance, None)


# --- renewed_at -------------------------------------------------------------------------------------------


def test_renewal_time_is_read_time_plus_remaining_minus_lease():
    assert renewed_at(100.0, 7.0, 10.0) == pytest.approx(97.0)


def test_key_without_ttl_counts_as_renewed_at_the_read_and_unknown_lease_proves_nothing():
    assert renewed_at(100.0, None, 10.0) == 100.0
    assert renewed_at(100.0, 7.0, None) == -math.inf


# --- EndpointTable: listings and announcements ------------------------------------------------------------


def test_listing_adds_instances_and_reports_the_change():
    table = EndpointTable()
    change = table.replace("echo", [seen(inst("b"), 0.0), seen(inst("a"), 0.0)], now=0.0)
    assert change is not None
    assert ids(change.endpoints) == ["a", "b"]
    assert ids(change.added) == ["a", "b"]
    assert ids(table.endpoints("echo")) == ["a", "b"]
    assert table.services() == ["echo"]


def test_identical_listing_reports_no_change():
    table = EndpointTable()
    table.replace("echo", [seen(inst("a"), 0.0)], now=0.0)
    assert table.replace("echo", [seen(inst("a"), 1.0)], now=1.0) is None


def test_listing_drops_instances_it_no_longer_shows():
    table = EndpointTable()
    table.replace("echo", [seen(inst("a"), 0.0), seen(inst("b"), 0.0)], now=0.0)
    change = table.replace("echo", [seen(inst("a"), 1.0)], now=1.0)
    assert change is not None
    assert ids(change.removed) == ["b"]
    assert ids(table.endpoints("echo")) == ["a"]


def test_empty_listing_forgets_the_service():
    table = EndpointTable()
    table.replace("echo", [seen(inst("a"), 0.0)], now=0.0)
    table.replace("echo", [], now=1.0)
    assert table.services() == []
    assert table.endpoints("echo") == []


def test_listing_of_another_services_instance_is_rejected():
    with pytest.raises(ValueError, match="contains"):
        EndpointTable().replace("echo", [seen(inst("a", service="other"), 0.0)], now=0.0)


def test_upsert_and_remove_apply_single_announcements():
    table = EndpointTable()
    added = table.upsert(seen(inst("a"), 0.0), now=0.0)
    assert added is not None
    assert ids(added.added) == ["a"]
    removed = table.remove("echo", "a")
    assert removed is not None
    assert ids(removed.removed) == ["a"]
    assert table.remove("echo", "a") is None
    assert table.remove("unknown", "a") is None


def test_changed_record_is_reported_as_updated():
    table = EndpointTable()
    table.upsert(seen(inst("a"), 0.0), now=0.0)
    change = table.upsert(seen(inst("a", weight=5), 1.0), now=1.0)
    assert change is not None
    assert ids(change.updated) == ["a"]
    assert change.endpoints[0].weight == 5


def test_not_serving_instances_are_known_but_not_routable():
    table = EndpointTable()
    table.replace("echo", [seen(inst("a"), 0.0), seen(inst("b", health=NOT_SERVING), 0.0)], now=0.0)
    assert ids(table.endpoints("echo")) == ["a"]
    assert ids(table.instances("echo")) == ["a", "b"]
    change = table.upsert(seen(inst("a", health=NOT_SERVING), 1.0), now=1.0)
    assert change is not None
    assert ids(change.removed) == ["a"]
    assert table.endpoints("echo") == []


# --- static stability -------------------------------------------------------------------------------------


def test_listings_during_grace_add_but_do_not_remove():
    clock = FakeClock()
    table = EndpointTable()
    table.replace("echo", [seen(inst("a"), 0.0), seen(inst("b"), 0.0)], now=clock.now())
    table.start_grace(clock.now(), 5.0)
    assert table.in_grace(clock.advance(1.0))
    # Redis came back empty: the listing shows only a re-registered "c".
    change = table.replace("echo", [seen(inst("c"), clock.now())], now=clock.now())
    assert change is not None
    assert ids(change.added) == ["c"]
    assert change.removed == ()
    assert ids(table.endpoints("echo")) == ["a", "b", "c"]
    clock.advance(4.0)
    assert not table.in_grace(clock.now())
    change = table.replace("echo", [seen(inst("a"), clock.now()), seen(inst("c"), clock.now())], clock.now())
    assert change is not None
    assert ids(change.removed) == ["b"]


def test_explicit_removal_still_applies_during_grace():
    table = EndpointTable()
    table.replace("echo", [seen(inst("a"), 0.0)], now=0.0)
    table.start_grace(0.0, 10.0)
    assert table.remove("echo", "a") is not None
    assert table.endpoints("echo") == []


def test_grace_never_shortens_and_rejects_bad_lengths():
    table = EndpointTable()
    table.start_grace(0.0, 10.0)
    table.start_grace(1.0, 1.0)
    assert table.in_grace(9.0)
    with pytest.raises(ValueError, match="non-negative"):
        table.start_grace(0.0, -1.0)


# --- failure marks and lease-based readmission ------------------------------------------------------------


def test_failed_instance_leaves_rotation_at_once():
    table = EndpointTable()
    table.replace("echo", [seen(inst("a"), 0.0), seen(inst("b"), 0.0)], now=0.0)
    change = table.mark_failed("echo", "a", now=1.0)
    assert change is not None
    assert ids(change.removed) == ["a"]
    assert ids(table.endpoints("echo")) == ["b"]
    assert table.is_failed("echo", "a")
    assert ids(table.instances("echo")) == ["a", "b"]


def test_marking_an_unknown_or_already_failed_instance_changes_nothing():
    table = EndpointTable()
    assert table.mark_failed("echo", "ghost", now=0.0) is None
    table.upsert(seen(inst("a"), 0.0), now=0.0)
    table.mark_failed("echo", "a", now=1.0)
    assert table.mark_failed("echo", "a", now=2.0) is None


def test_lease_renewed_before_the_failure_does_not_readmit():
    # The last heartbeat of a kill -9'd instance keeps its key alive for a while; that proves nothing.
    table = EndpointTable()
    table.upsert(seen(inst("a"), 0.0), now=0.0)
    table.mark_failed("echo", "a", now=5.0)
    assert table.replace("echo", [seen(inst("a"), 4.9)], now=6.0) is None
    assert table.upsert(seen(inst("a"), 5.0), now=7.0) is None
    assert table.endpoints("echo") == []


def test_lease_renewed_after_the_failure_readmits():
    table = EndpointTable()
    table.upsert(seen(inst("a"), 0.0), now=0.0)
    table.mark_failed("echo", "a", now=5.0)
    change = table.replace("echo", [seen(inst("a"), 5.1)], now=6.0)
    assert change is not None
    assert ids(change.added) == ["a"]
    assert not table.is_failed("echo", "a")


def test_failed_instance_whose_lease_expires_is_forgotten_with_its_mark():
    table = EndpointTable()
    table.upsert(seen(inst("a"), 0.0), now=0.0)
    table.mark_failed("echo", "a", now=1.0)
    assert table.replace("echo", [], now=11.0) is None  # no routable change: it was already out
    assert table.instances("echo") == []
    table.upsert(seen(inst("a"), 12.0), now=12.0)
    assert ids(table.endpoints("echo")) == ["a"]


@settings(max_examples=200, deadline=None)
@given(
    renewals=st.lists(st.floats(min_value=0.0, max_value=100.0), max_size=8),
    failed_at=st.floats(min_value=0.0, max_value=100.0),
)
def test_readmission_happens_exactly_when_some_renewal_follows_the_failure(
    renewals: list[float], failed_at: float
):
    table = EndpointTable()
    table.upsert(seen(inst("a"), -1.0), now=0.0)
    table.mark_failed("echo", "a", now=failed_at)
    for renewal in renewals:
        table.upsert(seen(inst("a"), renewal), now=100.0)
    assert (table.endpoints("echo") != []) == any(r > failed_at for r in renewals)
