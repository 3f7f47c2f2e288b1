"""The fingerprint that deduplicates alerts."""

from __future__ import annotations

from services.alert.fingerprint import fingerprint


def test_fingerprint_ignores_label_order():
    assert fingerprint({"kind": "speeding", "camera_id": "c1"}) == fingerprint(
        {"camera_id": "c1", "kind": "speeding"}
    )


def test_fingerprint_is_sha256_hex():
    value = fingerprint({"kind": "speeding"})
    assert len(value) == 64
    assert int(value, 16) >= 0


def test_different_values_give_different_fingerprints():
    assert fingerprint({"kind": "speeding", "camera_id": "c1"}) != fingerprint(
        {"kind": "speeding", "camera_id": "c2"}
    )


def test_separator_characters_in_values_cannot_make_label_sets_collide():
    assert fingerprint({"a": "1,b=2"}) != fingerprint({"a": "1", "b": "2"})
    assert fingerprint({"a": ""}) != fingerprint({})
