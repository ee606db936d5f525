"""`retrysafe keys show|delete`: find a key's record the way the middleware stored it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from retrysafe._fingerprint import RequestFacts
from retrysafe._keyring import Keyring
from retrysafe._policy import storage_id
from retrysafe._records import Claimed, StoredResponse
from retrysafe._scopes import authorization_scope, shared_scope
from retrysafe.cli._commands import cli
from retrysafe.stores.sqlite import SQLiteStore

SCOPE_IDS: dict[str | None, str] = {}  # Authorization (None: shared_scope) -> principal id


def scope_of(authorization: str | None) -> str:
    return SCOPE_IDS[authorization]


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two records filed as the middleware files them, under the secret it keeps in the store."""
    monkeypatch.delenv("RETRYSAFE_SECRET", raising=False)
    path = tmp_path / "keys.db"
    store = SQLiteStore(path)
    try:
        principals = Keyring(None).load(store)
        for auth, scope in (("Bearer sk_1", authorization_scope), (None, shared_scope)):
            headers = (("authorization", auth),) if auth else ()
            principal = scope(RequestFacts("POST", "/", "", headers, b""))
            assert principal is not None
            SCOPE_IDS[auth] = principals.id_of(principal)
        for key, auth in (("k-anon", None), ("k-auth", "Bearer sk_1")):
            id = storage_id(scope_of(auth), key)
            claimed = store.claim(id, "fp", 60)
            assert isinstance(claimed, Claimed)
            response = StoredResponse(201, (("content-type", "application/json"),), b'{"id":1}')
            assert store.complete(id, claimed.token, response, 3600, 60)
    finally:
        store.close()
    return path


def test_show_prints_the_record(db: Path) -> None:
    result = CliRunner().invoke(
        cli, ["keys", "show", "k-anon", "--shared", "--store", f"sqlite:///{db}"]
    )

    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["state"] == "completed"
    assert shown["id"] == storage_id(scope_of(None), "k-anon")
    assert shown["response"]["status"] == 201
    assert shown["response"]["body"] == '{"id":1}'


def test_the_store_url_comes_from_the_environment(db: Path) -> None:
    env = {"RETRYSAFE_STORE_URL": f"sqlite:///{db}"}
    result = CliRunner(env=env).invoke(cli, ["keys", "show", "k-anon", "--shared"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["state"] == "completed"


def test_a_key_is_found_only_in_its_own_scope(db: Path) -> None:
    url = f"sqlite:///{db}"
    runner = CliRunner()

    anonymous = runner.invoke(cli, ["keys", "show", "k-auth", "--shared", "--store", url])
    scoped = runner.invoke(
        cli, ["keys", "show", "k-auth", "--store", url, "--authorization", "Bearer sk_1"]
    )
    by_id = runner.invoke(
        cli, ["keys", "show", storage_id(scope_of("Bearer sk_1"), "k-auth"), "--id", "--store", url]
    )

    assert anonymous.exit_code == 1
    assert scoped.exit_code == 0, scoped.output
    assert by_id.exit_code == 0, by_id.output
    assert json.loads(scoped.output) == json.loads(by_id.output)


def test_delete_removes_the_record_once(db: Path) -> None:
    url = f"sqlite:///{db}"
    runner = CliRunner()

    first = runner.invoke(cli, ["keys", "delete", "k-anon", "--shared", "--store", url])
    again = runner.invoke(cli, ["keys", "delete", "k-anon", "--shared", "--store", url])
    show = runner.invoke(cli, ["keys", "show", "k-anon", "--shared", "--store", url])

    assert (first.exit_code, first.output.strip()) == (0, "deleted")
    assert again.exit_code == 1
    assert show.exit_code == 1
    store = SQLiteStore(db)
    try:
        assert store.get(storage_id(scope_of(None), "k-anon")) is None
        assert store.get(storage_id(scope_of("Bearer sk_1"), "k-auth")) is not None
    finally:
        store.close()


def test_whose_key_must_be_said(db: Path) -> None:
    result = CliRunner().invoke(cli, ["keys", "show", "k-anon", "--store", f"sqlite:///{db}"])

    assert result.exit_code == 2
    assert "say whose key it is" in result.output


def test_a_store_without_a_secret_is_a_clear_error(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "empty.db").close()
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = CliRunner(env={"RETRYSAFE_SECRET": ""}).invoke(
        cli, ["keys", "show", "k", "--authorization", "Bearer x", "--store", url]
    )

    assert result.exit_code == 1
    assert "holds no principal secret" in result.output


def test_a_bad_store_url_is_a_clear_error() -> None:
    result = CliRunner().invoke(cli, ["keys", "show", "k", "--store", "nosuch://x"])

    assert result.exit_code == 2
    assert "Error: unknown store URL scheme" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_store_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-db.db"
    garbage.write_bytes(b"this is not SQLite" * 100)

    result = CliRunner().invoke(cli, ["keys", "delete", "k", "--store", f"sqlite:///{garbage}"])

    assert result.exit_code == 2
    assert "Error:" in result.output
    assert "not a database" in result.output
    assert garbage.read_bytes() == b"this is not SQLite" * 100  # untouched
