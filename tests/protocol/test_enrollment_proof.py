"""The passphrase's form and the proof of protocol.enrollment (docs/protocol.md section 2.1)."""

from __future__ import annotations

import pytest

from protocol.enrollment import (
    GROUP_CHARS,
    Passphrase,
    ScryptParams,
    enrollment_proof,
    passphrase_key,
    proof_matches,
)

# Cheap scrypt for tests of the construction; the agent's cost is ScryptParams().
CHEAP = ScryptParams(n=2**4, r=1, p=1)


def test_a_passphrase_reads_back_however_it_is_written() -> None:
    made = Passphrase.new()
    written = str(made)

    assert written.count("-") == 5
    for form in (written, written.lower(), written.replace("-", " "), made.text):
        assert Passphrase.parse(form) == made
    assert made.enrollment == made.text[:GROUP_CHARS]


def test_a_passphrase_shows_only_its_id() -> None:
    made = Passphrase.new()

    assert made.text[GROUP_CHARS:] not in repr(made)


@pytest.mark.parametrize("written", ["", "ABCDE-FGHIJ", "ABCDE-FGHIJ-KLMNO-PQRST-UVWXY-Z2341"])
def test_a_malformed_passphrase_is_refused_without_being_repeated(written: str) -> None:
    with pytest.raises(ValueError) as refused:
        Passphrase.parse(written)

    assert written == "" or written not in str(refused.value)


def test_the_proof_depends_on_the_passphrase_the_nonce_and_the_csr() -> None:
    passphrase, other = Passphrase.new(), Passphrase.new()
    key = passphrase_key(passphrase, b"salt", CHEAP)
    proof = enrollment_proof(key, b"nonce-1", b"csr")

    assert proof_matches(key, b"nonce-1", b"csr", proof)
    assert not proof_matches(key, b"nonce-2", b"csr", proof)
    assert not proof_matches(key, b"nonce-1", b"another csr", proof)
    assert not proof_matches(passphrase_key(other, b"salt", CHEAP), b"nonce-1", b"csr", proof)
    assert passphrase_key(passphrase, b"other salt", CHEAP) != key
