"""argon2id password hashes and the password policy."""

from __future__ import annotations

import pytest

from services.auth import passwords


def test_hashes_are_argon2id_phc_strings_that_verify_only_the_right_password():
    encoded = passwords.hash_password("correct horse battery")
    assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert passwords.verify_password("correct horse battery", encoded)
    assert not passwords.verify_password("correct horse batterY", encoded)
    assert passwords.hash_password("correct horse battery") != encoded, "salted"


def test_a_malformed_stored_hash_never_verifies():
    assert not passwords.verify_password("anything at all", "$argon2id$garbage")
    assert not passwords.verify_password("anything at all", "")


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short", "at least 12"),
        (" leading space!", "white space"),
        ("x" * 1025, "at most"),
        ("twelve chars", None),
    ],
)
def test_the_policy(password, problem):
    found = passwords.password_problem(password)
    assert (found is None) if problem is None else (problem in found)
