"""`routined secret …` and the secrets endpoints: values in, names out, one account each.

The commands run on the store itself (SQLite and PostgreSQL) and, once, against a
real HTTP server with an account's key; the endpoints are also called directly
with keys of each scope and of another account.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from cryptography.fernet import Fernet
from typer.testing import CliRunner, Result

from routined import api_keys
from routined.api_keys import Scope
from routined.cli import app
from routined.config import Settings
from routined.db import Store
from routined.http.app import create_app
from routined.models import DEFAULT_ACCOUNT_ID, Account
from routined.secrets import vault
from tests.conftest import T0
from tests.test_management_api import Api, assert_error, make_api, operator_key

runner = CliRunner()


def run(*args: str, stdin: str | None = None) -> Result:
    return runner.invoke(app, list(args), input=stdin)


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    return result.stdout


def stored(url: str, account_id: str, *names: str) -> dict[str, str]:
    """The values as a run would get them."""
    store = Store(url)
    try:
        with store.transaction(readonly=True) as session:
            return vault.reveal(session, Settings.from_env(), account_id=account_id, names=names)
    finally:
        store.dispose()


def test_a_secret_is_set_from_stdin_listed_by_name_and_deleted(database: str) -> None:
    said = ok(run("secret", "set", "NPM_TOKEN", stdin="npm-first-1234\n"))
    assert said.strip() == "secret NPM_TOKEN stored for account default"
    said = ok(run("secret", "set", "NPM_TOKEN", stdin="npm-second-5678\n"))
    assert said.strip() == "secret NPM_TOKEN replaced for account default"
    assert stored(database, DEFAULT_ACCOUNT_ID, "NPM_TOKEN") == {"NPM_TOKEN": "npm-second-5678"}

    listed = run("secret", "list", "--json")
    [row] = json.loads(ok(listed))
    assert set(row) == {"name", "account", "created_at", "updated_at"}
    assert (row["name"], row["account"]) == ("NPM_TOKEN", "default")
    table = ok(run("secret", "list"))
    assert "NPM_TOKEN" in table and "Created (UTC)" in table
    for shown in (listed.output, table):
        assert "npm-" not in shown

    assert ok(run("secret", "delete", "NPM_TOKEN")).strip() == (
        "secret NPM_TOKEN deleted from account default"
    )
    assert ok(run("secret", "list")).strip() == (
        "No secrets in account default; `routined secret set NAME` stores one."
    )
    again = run("secret", "delete", "NPM_TOKEN")
    assert again.exit_code == 1
    assert "no secret 'NPM_TOKEN' in account default; `routined secret list` shows them" in (
        again.output
    )


@pytest.mark.parametrize(
    ("stdin", "value"),
    [
        ("plain", "plain"),
        ("with-newline\n", "with-newline"),
        ("two-newlines\n\n", "two-newlines\n"),
        ("windows\r\n", "windows"),
        ("  spaced  \n", "  spaced  "),
        ("line one\nline two\n", "line one\nline two"),
    ],
)
def test_one_trailing_newline_is_not_part_of_the_value(
    database: str, stdin: str, value: str
) -> None:
    ok(run("secret", "set", "A_SECRET", stdin=stdin))
    assert stored(database, DEFAULT_ACCOUNT_ID, "A_SECRET") == {"A_SECRET": value}


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (["NPM_TOKEN"], "", "the value is empty; pipe it in"),
        (["NPM_TOKEN"], "\n", "the value is empty; pipe it in"),
        (["PATH"], "value", "NAME: 'PATH' is set by the sandbox itself; choose another name"),
        (["ANTHROPIC_API_KEY"], "value", "are Claude Code's and routined's own"),
        (["NPM-TOKEN"], "value", "NAME: 'NPM-TOKEN' is not a variable name"),
        (["NPM_TOKEN", "--account", "ghost"], "value", "no account named 'ghost'"),
    ],
)
def test_what_cannot_be_stored_is_refused_saying_why(
    database: str, args: list[str], stdin: str, says: str
) -> None:
    result = run("secret", "set", *args, stdin=stdin)
    assert result.exit_code == 1 and says in result.output, result.output
    assert ok(run("secret", "list", "--json")).strip() == "[]"


def test_secrets_belong_to_the_account_named(database: str) -> None:
    ok(run("account", "create", "acme"))
    said = ok(run("secret", "set", "DEPLOY_KEY", "--account", "acme", stdin="acme-deploy-key"))
    assert said.strip() == "secret DEPLOY_KEY stored for account acme"
    assert "DEPLOY_KEY" in ok(run("secret", "list", "--account", "acme"))
    assert "No secrets in account default" in ok(run("secret", "list"))
    store = Store(database)
    with store.transaction(readonly=True) as session:
        acme = session.query(Account).filter_by(name="acme").one().id
    store.dispose()
    assert stored(database, acme, "DEPLOY_KEY") == {"DEPLOY_KEY": "acme-deploy-key"}
    refused = run("secret", "delete", "DEPLOY_KEY")
    assert refused.exit_code == 1 and "no secret 'DEPLOY_KEY' in account default" in (
        refused.output
    )
    ok(run("secret", "delete", "DEPLOY_KEY", "--account", "acme"))
    assert "No secrets in account acme" in ok(run("secret", "list", "--account", "acme"))


def test_a_bad_configured_key_stops_the_write_and_names_the_setting(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTINED_SECRET_KEY", "not-a-fernet-key")
    result = run("secret", "set", "NPM_TOKEN", stdin="npm-abc123")
    assert result.exit_code == 1
    assert "ROUTINED_SECRET_KEY: not a Fernet key" in result.output
    assert "npm-abc123" not in result.output
    monkeypatch.delenv("ROUTINED_SECRET_KEY")
    assert "No secrets" in ok(run("secret", "list"))


def test_secret_key_prints_a_new_usable_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Purely local: no store is opened, so a store that cannot be reached does not matter.
    monkeypatch.setenv("ROUTINED_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    first, second = (run("secret", "key") for _ in range(2))
    made = [ok(first).strip(), ok(second).strip()]
    assert made[0] != made[1]
    for key in made:
        Fernet(key)  # valid, or this raises
        monkeypatch.setenv("ROUTINED_SECRET_KEY", key)
        assert Settings.from_env().secret_key.reveal() == key
    assert "ROUTINED_SECRET_KEY" in first.stderr


def test_rotate_moves_every_secret_to_the_new_key_so_the_old_one_can_go(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("ROUTINED_SECRET_KEY", old)
    ok(run("account", "create", "acme"))
    ok(run("secret", "set", "NPM_TOKEN", stdin="npm-rotated-1"))
    ok(run("secret", "set", "DEPLOY_KEY", "--account", "acme", stdin="acme-rotated-2"))
    store = Store(database)
    with store.transaction(readonly=True) as session:
        acme = session.query(Account).filter_by(name="acme").one().id
    store.dispose()

    monkeypatch.setenv("ROUTINED_SECRET_KEY", f"{new},{old}")
    # Both keys decrypt meanwhile: runs go on while the key changes.
    assert stored(database, DEFAULT_ACCOUNT_ID, "NPM_TOKEN") == {"NPM_TOKEN": "npm-rotated-1"}
    assert json.loads(ok(run("secret", "rotate", "--json"))) == {"rotated": 2, "unreadable": []}

    monkeypatch.setenv("ROUTINED_SECRET_KEY", new)
    assert stored(database, DEFAULT_ACCOUNT_ID, "NPM_TOKEN") == {"NPM_TOKEN": "npm-rotated-1"}
    assert stored(database, acme, "DEPLOY_KEY") == {"DEPLOY_KEY": "acme-rotated-2"}
    monkeypatch.setenv("ROUTINED_SECRET_KEY", old)
    with pytest.raises(vault.VaultError, match="ROUTINED_SECRET_KEY=NEW,OLD"):
        stored(database, acme, "DEPLOY_KEY")


def test_rotate_names_secrets_no_key_reads_and_leaves_them_as_they_are(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lost, old, new = (Fernet.generate_key().decode() for _ in range(3))
    monkeypatch.setenv("ROUTINED_SECRET_KEY", lost)
    ok(run("secret", "set", "LOST_TOKEN", stdin="lost-value-1"))
    monkeypatch.setenv("ROUTINED_SECRET_KEY", old)
    ok(run("secret", "set", "NPM_TOKEN", stdin="npm-value-2"))

    monkeypatch.setenv("ROUTINED_SECRET_KEY", f"{new},{old}")
    result = run("secret", "rotate")
    assert result.exit_code == 1
    assert result.stdout.strip() == "1 secret encrypted under the first key"
    assert "none of the keys decrypts default/LOST_TOKEN: left as they are" in result.output
    again = run("secret", "rotate", "--json")
    assert again.exit_code == 1
    assert json.loads(again.stdout) == {
        "rotated": 1,
        "unreadable": [{"account": "default", "name": "LOST_TOKEN"}],
    }
    monkeypatch.setenv("ROUTINED_SECRET_KEY", lost)
    assert stored(database, DEFAULT_ACCOUNT_ID, "LOST_TOKEN") == {"LOST_TOKEN": "lost-value-1"}
    monkeypatch.setenv("ROUTINED_SECRET_KEY", new)
    assert stored(database, DEFAULT_ACCOUNT_ID, "NPM_TOKEN") == {"NPM_TOKEN": "npm-value-2"}


# The endpoints


@pytest.fixture
def api(store: Store, tmp_path: Path) -> Iterator[Api]:
    yield from make_api(store, tmp_path, tmp_path)


def test_a_key_sets_and_reads_its_own_accounts_secrets_by_scope(api: Api) -> None:
    api.account("acme")
    api.account("beta")
    writer, reader = api.key("acme", "write"), api.key("acme", "read")
    other = api.key("beta", "admin")
    path = "/accounts/acme/secrets"

    made = api.ok("PUT", f"{path}/NPM_TOKEN", writer, body={"value": "npm-abc123"})
    assert made == {
        "name": "NPM_TOKEN",
        "account": "acme",
        "created_at": "2026-11-28T12:00:00Z",
        "updated_at": "2026-11-28T12:00:00Z",
        "created": True,
    }
    assert (
        api.ok("PUT", f"{path}/NPM_TOKEN", writer, body={"value": "npm-def456"})["created"] is False
    )
    assert [s["name"] for s in api.ok("GET", path, reader)] == ["NPM_TOKEN"]
    assert [s["name"] for s in api.ok("GET", path, api.operator)] == ["NPM_TOKEN"]

    assert_error(
        api.call("PUT", f"{path}/NPM_TOKEN", reader, body={"value": "x-1234"}),
        403, "permission_error", "this key has the read scope; this needs write",
    )  # fmt: skip
    assert_error(
        api.call("DELETE", f"{path}/NPM_TOKEN", reader),
        403, "permission_error", "this needs write",
    )  # fmt: skip
    # Another account's secrets are not there at all.
    for method, body in (("GET", None), ("PUT", {"value": "stolen-1"}), ("DELETE", None)):
        suffix = "" if method == "GET" else "/NPM_TOKEN"
        assert_error(
            api.call(method, f"{path}{suffix}", other, body=body),
            404, "not_found_error", "no account named 'acme'",
        )  # fmt: skip
    assert api.ok("GET", "/accounts/beta/secrets", other) == []

    with api.store.transaction(readonly=True) as session:
        acme = session.query(Account).filter_by(name="acme").one().id
        revealed = vault.reveal(session, api.settings, account_id=acme, names=["NPM_TOKEN"])
    assert revealed == {"NPM_TOKEN": "npm-def456"}

    assert api.ok("DELETE", f"{path}/NPM_TOKEN", writer) is None
    assert_error(
        api.call("DELETE", f"{path}/NPM_TOKEN", writer),
        404, "not_found_error", "no secret 'NPM_TOKEN' in account acme; "
        "`routined secret list --account acme` shows them",
    )  # fmt: skip


def test_only_the_operator_rotates_the_secret_key(api: Api) -> None:
    api.account("acme")
    api.ok(
        "PUT",
        "/accounts/acme/secrets/NPM_TOKEN",
        api.key("acme", "write"),
        body={"value": "npm-1234"},
    )
    assert_error(
        api.call("POST", "/secrets/rotate", api.key("acme", "admin")),
        403, "permission_error", "only the operator (an admin key of the default account, or "
        "the CLI on the server) rotates the secret key",
    )  # fmt: skip
    assert api.ok("POST", "/secrets/rotate", api.operator) == {"rotated": 1, "unreadable": []}


@pytest.mark.parametrize(
    ("name", "body", "says"),
    [
        ("PATH", {"value": "v-1234"}, "name: 'PATH' is set by the sandbox itself"),
        ("CLAUDE_X", {"value": "v-1234"}, "name: 'CLAUDE_X': names starting with ANTHROPIC_"),
        ("9LIVES", {"value": "v-1234"}, "name: '9LIVES' is not a variable name"),
        ("A_KEY", {"value": ""}, "value: empty; give the secret's value"),
        ("A_KEY", {"value": "a\x00b"}, "contains a NUL character"),
        ("A_KEY", {"value": 5}, "value: Input should be a valid string"),
        ("A_KEY", {}, "value: Field required"),
    ],
)
def test_bad_secrets_are_400_naming_the_field(
    api: Api, name: str, body: dict[str, object], says: str
) -> None:
    assert_error(
        api.call("PUT", f"/accounts/default/secrets/{name}", api.operator, body=body),
        400, "invalid_request_error", says,
    )  # fmt: skip
    assert api.ok("GET", "/accounts/default/secrets", api.operator) == []


# Against a server


@pytest.fixture
def served(sqlite_store: Store, tmp_path: Path) -> Iterator[tuple[str, Store, Settings]]:
    """The real app over HTTP on a free port. Its socket listens before the server
    starts, so a request made at once waits in the backlog rather than failing."""
    settings = Settings.from_env({"ROUTINED_HOME": str(tmp_path / "server-home")})
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    server = uvicorn.Server(
        uvicorn.Config(create_app(sqlite_store, settings, clock=lambda: T0), log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]})
    thread.start()
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}", sqlite_store, settings
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listening.close()


def test_against_a_server_a_key_uses_its_own_account_unless_told(
    served: tuple[str, Store, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, store, settings = served
    with store.transaction() as session:
        session.add(Account(id="acct_acme", name="acme", plan="unlimited", created_at=T0))
    operator = operator_key(store)
    with store.transaction() as session:
        _key, acme_key = api_keys.issue(session, "acct_acme", name="ci", scope=Scope.WRITE, now=T0)
    monkeypatch.setenv("ROUTINED_URL", url)

    monkeypatch.setenv("ROUTINED_API_KEY", acme_key)
    said = ok(run("secret", "set", "NPM_TOKEN", stdin="acme-npm-1234\n"))
    assert said.strip() == "secret NPM_TOKEN stored for account acme"
    refused = run("secret", "list", "--account", "default")
    assert refused.exit_code == 1 and "no account named 'default'" in refused.output

    monkeypatch.setenv("ROUTINED_API_KEY", operator)
    said = ok(run("secret", "set", "NPM_TOKEN", stdin="ours-npm-5678\n"))
    assert said.strip() == "secret NPM_TOKEN stored for account default"
    assert "NPM_TOKEN" in ok(run("secret", "list", "--account", "acme"))

    with store.transaction(readonly=True) as session:
        assert vault.reveal(session, settings, account_id="acct_acme", names=["NPM_TOKEN"]) == {
            "NPM_TOKEN": "acme-npm-1234"
        }
        assert vault.reveal(
            session, settings, account_id=DEFAULT_ACCOUNT_ID, names=["NPM_TOKEN"]
        ) == {"NPM_TOKEN": "ours-npm-5678"}
    # The server's key file: made on the server, by the first write.
    assert (settings.home / "secret.key").exists()
