"""Commands about secrets: secret set, list, delete, key, rotate."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from routined.cli.common import (
    Client,
    JsonFlag,
    app,
    connect,
    err,
    fail,
    out,
    print_json,
    remote,
    segment,
)

secrets = typer.Typer(
    help="Secrets: values routines get as environment variables, encrypted at rest."
)
app.add_typer(secrets, name="secret")

AccountOption = Annotated[
    str | None,
    typer.Option(help="The account whose routines use it (default: the key's own, or default)."),
]


@secrets.command("set")
def set_(
    name: Annotated[str, typer.Argument(help="The environment variable it becomes.")],
    account: AccountOption = None,
) -> None:
    """Store a secret, or replace its value; the value is read from stdin, never shown."""
    from routined.variables import check_variable_name

    try:
        check_variable_name(name)
    except ValueError as error:
        fail(f"NAME: {error}")
    value = _read_value(name)
    if not value:
        fail(f'the value is empty; pipe it in: printf %s "$VALUE" | routined secret set {name}')
    with connect() as client:
        owner = _owner(client, account)
        stored = client.call(
            "PUT", f"/accounts/{segment(owner)}/secrets/{segment(name)}", body={"value": value}
        )
    done = "stored" if stored["created"] else "replaced"
    out.print(f"secret {escape(stored['name'])} {done} for account {escape(stored['account'])}")


@secrets.command("list")
def list_(account: AccountOption = None, as_json: JsonFlag = False) -> None:
    """The account's secrets: names and times, never values."""
    with connect(creates=False) as client:
        owner = _owner(client, account)
        rows = client.call("GET", f"/accounts/{segment(owner)}/secrets")
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print(f"No secrets in account {escape(owner)}; `routined secret set NAME` stores one.")
        return
    table = Table("Secret", "Created (UTC)", "Updated (UTC)")
    for row in rows:
        table.add_row(
            row["name"],
            row["created_at"][:16].replace("T", " "),
            row["updated_at"][:16].replace("T", " "),
        )
    out.print(table)


@secrets.command("delete")
def delete(name: str, account: AccountOption = None) -> None:
    """Delete a secret: runs that start later and name it fail until it is set again."""
    with connect() as client:
        owner = _owner(client, account)
        client.call("DELETE", f"/accounts/{segment(owner)}/secrets/{segment(name)}")
    out.print(f"secret {escape(name)} deleted from account {escape(owner)}")


@secrets.command("key")
def key() -> None:
    """Print a new key for ROUTINED_SECRET_KEY (made here; nothing is stored)."""
    from cryptography.fernet import Fernet

    out.print(Fernet.generate_key().decode("ascii"))
    err.print(
        "Set it as ROUTINED_SECRET_KEY (or in a file named by ROUTINED_SECRET_KEY_FILE). "
        "To replace a key secrets are stored under, set ROUTINED_SECRET_KEY=NEW,OLD, run "
        "`routined secret rotate`, then drop OLD."
    )


@secrets.command("rotate")
def rotate(as_json: JsonFlag = False) -> None:
    """Encrypt every secret again under the first key of ROUTINED_SECRET_KEY (NEW,OLD),
    so the old key can be dropped; the operator's to do."""
    with connect() as client:
        rotation = client.call("POST", "/secrets/rotate")
    if as_json:
        print_json(rotation)
        if rotation["unreadable"]:
            raise typer.Exit(1)
        return
    count = rotation["rotated"]
    out.print(f"{count} secret{'' if count == 1 else 's'} encrypted under the first key")
    if rotation["unreadable"]:
        names = ", ".join(f"{s['account']}/{s['name']}" for s in rotation["unreadable"])
        fail(
            f"none of the keys decrypts {names}: left as they are; give the key they "
            "were stored with too, or store them again with `routined secret set`"
        )
    err.print("Every secret is under the first key now: the others can be removed.")


def _read_value(name: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"Value of {name} (not shown): ")
    value = sys.stdin.read()
    # `echo VALUE |` and a file end with a newline that is not part of the value.
    if value.endswith("\r\n"):
        return value[:-2]
    return value.removesuffix("\n")


def _owner(client: Client, account: str | None) -> str:
    """The account named, else the key's own (the operator's is `default`), else here
    the install's `default`, as `routined key create` chooses."""
    if account is not None:
        return account
    if not remote():
        return "default"
    # A key sees its own account only; the operator (an admin key of default) sees all.
    visible = client.call("GET", "/accounts")
    return str(visible[0]["name"]) if len(visible) == 1 else "default"
