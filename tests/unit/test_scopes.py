"""Scopes and principal ids (SPEC 5): who owns a key, and what of it may be written down."""

from __future__ import annotations

import re

import pytest

from retrysafe._fingerprint import RequestFacts
from retrysafe._scopes import (
    PrincipalKey,
    authorization_scope,
    cookie_scope,
    cookie_value,
    first_scope,
    header_scope,
    shared_scope,
    user_scope,
    wants,
)
from retrysafe.errors import ConfigurationError

SECRET = "0123456789abcdef0123456789abcdef"


def facts(*headers: tuple[str, str], user: str | None = None) -> RequestFacts:
    return RequestFacts("POST", "/x", "", headers, b"", user)


def test_authorization_scope_names_the_credential_or_nobody() -> None:
    alice = authorization_scope(facts(("Authorization", "Bearer alice")))
    bob = authorization_scope(facts(("authorization", "Bearer bob")))
    assert alice is not None
    assert bob is not None
    assert alice != bob
    assert alice == authorization_scope(facts(("AUTHORIZATION", "Bearer alice")))
    # No credentials: nobody, never a shared "anonymous" principal.
    assert authorization_scope(facts()) is None
    assert authorization_scope(facts(("authorization", ""))) is None


def test_header_scope_is_per_header_name() -> None:
    scope = header_scope("X-Api-Key")
    one = scope(facts(("x-api-key", "k1")))
    assert one is not None
    assert one != scope(facts(("x-api-key", "k2")))
    assert one == scope(facts(("X-API-KEY", "k1")))
    assert scope(facts()) is None
    assert scope(facts(("x-api-key", ""))) is None
    # The header name is part of the principal: the same value under another header differs.
    assert one != header_scope("X-Tenant")(facts(("x-tenant", "k1")))
    assert header_scope("Authorization")(facts(("authorization", "t"))) == authorization_scope(
        facts(("authorization", "t"))
    )


def test_cookie_scope_reads_one_cookie_and_ignores_the_others() -> None:
    scope = cookie_scope("sessionid")
    a = scope(facts(("cookie", "csrftoken=one; sessionid=abc; _ga=GA1.2.3")))
    b = scope(facts(("cookie", "_ga=GA9.9.9; sessionid=abc; csrftoken=two")))
    assert a is not None
    assert a == b
    assert a != scope(facts(("cookie", "sessionid=abd")))
    assert scope(facts(("cookie", "csrftoken=one"))) is None
    assert scope(facts(("cookie", "xsessionid=abc"))) is None  # whole names only
    assert scope(facts()) is None
    # A cookie value equal to a header value is still another principal.
    assert a != header_scope("X-Api-Key")(facts(("x-api-key", "abc")))


def test_cookie_value_parses_what_browsers_send() -> None:
    assert cookie_value('a=1; s="quoted"; b', "s") == "quoted"
    assert cookie_value("s=first; s=second", "s") == "first"
    assert cookie_value("s=", "s") is None
    assert cookie_value("broken;;; s=v ; =x", "s") == "v"


def test_user_scope_reads_the_authenticated_user() -> None:
    assert user_scope(facts(user="alice")) != user_scope(facts(user="bob"))
    assert user_scope(facts()) is None
    assert user_scope(facts(user="alice")) != authorization_scope(facts(("authorization", "alice")))


def test_first_scope_takes_the_first_that_identifies() -> None:
    scope = first_scope(authorization_scope, cookie_scope("sessionid"))
    token = scope(facts(("authorization", "Bearer t"), ("cookie", "sessionid=s")))
    assert token == authorization_scope(facts(("authorization", "Bearer t")))
    assert scope(facts(("cookie", "sessionid=s"))) == cookie_scope("sessionid")(
        facts(("cookie", "sessionid=s"))
    )
    assert scope(facts()) is None
    assert first_scope(authorization_scope, shared_scope)(facts()) == shared_scope(facts())
    assert wants(scope) == "the Authorization header or the sessionid cookie"


def test_bad_scope_arguments_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        cookie_scope("")
    with pytest.raises(ConfigurationError):
        header_scope("")
    with pytest.raises(ConfigurationError):
        first_scope()


def test_principal_ids_are_keyed_by_the_secret() -> None:
    principal = authorization_scope(facts(("authorization", "Basic YWxpY2U6aHVudGVyMg==")))
    assert principal is not None
    one = PrincipalKey(SECRET).id_of(principal)
    assert re.fullmatch("[0-9a-f]{64}", one)
    assert one == PrincipalKey(SECRET).id_of(principal)
    assert one != PrincipalKey(SECRET[::-1]).id_of(principal)
    assert "YWxpY2U6aHVudGVyMg" not in one
    assert SECRET not in repr(PrincipalKey(SECRET))
    # Undecodable header bytes (surrogateescape) still give an id.
    assert len(PrincipalKey(SECRET).id_of("header:authorization\0Bearer \udcff")) == 64
