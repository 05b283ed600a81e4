"""Client secrets: single use, expiry, stable outcomes, only digests kept."""

from __future__ import annotations

from quillman.client_secrets import REMEMBER_EXPIRED_S, SecretStore, looks_like_secret


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_secret_opens_once():
    store = SecretStore(clock=Clock())
    secret, expires_at = store.mint(60, {"instructions": "Be brief."})
    assert looks_like_secret(secret) and expires_at == 1060
    assert store.redeem(secret) == ("ok", {"instructions": "Be brief."})
    assert store.redeem(secret) == ("used", None)


def test_expired_unknown_and_forgotten():
    clock = Clock()
    store = SecretStore(clock=clock)
    secret, _ = store.mint(10)
    assert store.redeem("ek_not-one-of-ours") == ("invalid", None)
    clock.now += 10
    assert store.redeem(secret) == ("expired", None)
    clock.now += REMEMBER_EXPIRED_S
    assert store.redeem(secret) == ("invalid", None) and len(store) == 0


def test_only_digests_are_kept():
    store = SecretStore(clock=Clock())
    secret, _ = store.mint(60)
    assert secret not in repr(store.__dict__) and secret[3:] not in repr(store.__dict__)


def test_live_secrets_are_bounded():
    store = SecretStore(max_live=2, clock=Clock())
    first, _ = store.mint(60)
    store.mint(60)
    assert store.mint(60) is None
    store.redeem(first)  # used: no longer live
    assert store.mint(60) is not None
