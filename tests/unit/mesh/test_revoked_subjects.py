"""RevokedTokens: a revoked subject loses the tokens issued up to the revocation, not later ones."""

from __future__ import annotations

from mesh.tokens import RevokedTokens, subject_member


def test_tokens_issued_before_a_subject_revocation_are_revoked_later_ones_are_not():
    revoked = RevokedTokens()
    revoked.add(subject_member("cam-1", 1000.5), expires_at=1900.0)
    assert revoked.is_revoked("jti-a", "cam-1", 1000)
    assert revoked.is_revoked("jti-b", "cam-1", 999)
    assert not revoked.is_revoked("jti-c", "cam-1", 1001)
    assert not revoked.is_revoked("jti-d", "cam-2", 1000)
    assert revoked.is_revoked("jti-e", "cam-1", None)  # no iat: cannot prove it is newer


def test_token_ids_still_work_alone_and_entries_expire():
    revoked = RevokedTokens()
    revoked.replace([("jti-x", 500.0), (subject_member("svc-a", 100.0), 400.0)])
    assert revoked.is_revoked("jti-x")
    assert revoked.is_revoked("other", "svc-a", 50)
    revoked.prune(450.0)
    assert not revoked.is_revoked("other", "svc-a", 50)
    assert revoked.is_revoked("jti-x")
    revoked.prune(600.0)
    assert len(revoked) == 0


def test_the_latest_revocation_of_a_subject_wins():
    revoked = RevokedTokens()
    revoked.add(subject_member("cam-1", 100.0), 1000.0)
    revoked.add(subject_member("cam-1", 200.0), 1100.0)
    assert revoked.is_revoked("t", "cam-1", 150)
