"""Commands about management API keys: key create, list, revoke."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from routined.cli.common import JsonFlag, app, connect, out, print_json, remote, segment

keys = typer.Typer(help="API keys let `--server` and other programs manage an account.")
app.add_typer(keys, name="key")


@keys.command("create")
def create(
    name: Annotated[str, typer.Argument(help="What the key is for, such as `ci` or `laptop`.")],
    account: Annotated[
        str | None, typer.Option(help="The account it acts for (default: the key's own).")
    ] = None,
    scope: Annotated[
        str, typer.Option(help="read; write (also changes things); admin (also manages keys).")
    ] = "read",
    as_json: JsonFlag = False,
) -> None:
    """Create an API key (shown once)."""
    if account is None and not remote():
        account = "default"
    with connect() as client:
        made = client.call("POST", "/keys", body={"name": name, "scope": scope, "account": account})
    if as_json:
        print_json(made)
        return
    out.print(
        f"API key {made['id']} ({escape(made['name'])}) for account "
        f"[bold]{escape(made['account'])}[/], scope {made['scope']}."
    )
    out.print("It is shown only now:\n")
    out.print(f"  {made['key']}\n")
    out.print("Use it: ROUTINED_URL=<server> ROUTINED_API_KEY=<key> routined list")


@keys.command("list")
def list_keys(
    account: Annotated[str | None, typer.Option(help="Only this account's keys.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """API keys, without their secrets."""
    with connect(creates=False) as client:
        rows = client.call("GET", "/keys", params={"account": account})
    if as_json:
        print_json(rows)
        return
    table = Table("Key", "Account", "Name", "Scope", "Created (UTC)", "State")
    for row in rows:
        state = f"revoked {row['revoked_at'][:16]}" if row["revoked_at"] else "live"
        table.add_row(
            row["id"],
            row["account"],
            escape(row["name"]),
            row["scope"],
            row["created_at"][:16].replace("T", " "),
            state,
        )
    out.print(table)


@keys.command("revoke")
def revoke(key_id: str) -> None:
    """Revoke an API key: it stops working at once."""
    with connect() as client:
        client.call("DELETE", f"/keys/{segment(key_id)}")
    out.print(f"API key {key_id} revoked")
