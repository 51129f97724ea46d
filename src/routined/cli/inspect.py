"""`routined inspect RUN`: what is kept of a run that delivered nothing, and how to look.

The kept files (`routined.runs.kept`) are in the run's folder on the server's machine, so
the command reads them there; against a remote server (`--server`) it says where
they are. It runs git only to list a bundle's refs, which reads the bundle's header.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from routined import runs
from routined.cli.common import JsonFlag, app, connect, out, print_json, remote, segment, settings
from routined.workspace import GitError

if TYPE_CHECKING:
    from routined.runs import kept


@app.command()
def inspect(
    run: Annotated[str, typer.Argument(help="Run id or session id.")],
    as_json: JsonFlag = False,
) -> None:
    """Show what is kept of a run that delivered nothing, and how to bring it into a clone."""
    from routined.runs import kept

    with connect(creates=False) as client:
        found = client.call("GET", f"/runs/{segment(run)}")
        run_id = str(found["id"])
        if remote():
            elsewhere = (
                f"run {run_id}: its kept files are on the server's machine, in its "
                f"ROUTINED_HOME under runs/{run_id}/; run `routined inspect {run_id}` there"
            )
            if as_json:
                print_json({"run_id": run_id, "status": found["status"], "note": elsewhere})
            else:
                out.print(escape(elsewhere))
            return
        folder = settings().runs_dir / run_id
        items = kept.load(folder)
        views = [client.run(_view(item, run_id)) for item in items or []]
    note = None if views else _nothing_kept(found, folder, items)
    if as_json:
        print_json(
            {
                "run_id": run_id,
                "status": found["status"],
                "folder": str(folder),
                "kept": views,
                "note": note,
            }
        )
        return
    if note is not None:
        out.print(escape(note))
        return
    out.print(
        f"Run {run_id} ({found['status']}): what it did not deliver is kept in "
        f"{escape(str(folder))}:"
    )
    for view in views:
        _print_view(view)
    out.print(
        "\nThe bundles and folders hold the agent's work as data only: listing a bundle, "
        "fetching from it and reading the folders run nothing of the agent's."
    )


async def _view(item: kept.Kept, run_id: str) -> dict[str, Any]:
    """One kept repository as the command shows it; the refs read from the bundle."""
    from routined.runs import kept

    refs, missing = {}, list(item.missing)
    if item.bundle is not None:
        try:
            refs = await kept.heads(item.bundle)
        except GitError as error:
            missing.append(f"the bundle cannot be read: {error}")
    bundled = kept.Kept(item.repository, item.name, item.bundle if refs else None, item.tree, refs)
    return {
        "repository": item.repository,
        "name": item.name,
        "bundle": str(bundled.bundle) if bundled.bundle else None,
        "refs": refs,
        "tree": str(item.tree) if item.tree else None,
        "fetch": bundled.fetch_command(run_id),
        "missing": missing,
    }


def _print_view(view: dict[str, Any]) -> None:
    out.print(f"\n[bold]{escape(view['name'])}[/]  {escape(view['repository'])}".rstrip())
    if view["bundle"]:
        out.print(f"  bundle  {escape(view['bundle'])}")
        width = max(len(_label(ref)) for ref in view["refs"])
        for ref, sha in sorted(view["refs"].items()):
            out.print(f"          {escape(_label(ref)).ljust(width)}  {sha[:12]}")
    if view["tree"]:
        out.print(f"  files   {escape(view['tree'])}")
        out.print("          plain files, not a repository: no .git in it, links made files")
    for why in view["missing"]:
        out.print(f"  [yellow]missing[/] {escape(why)}")
    if view["fetch"]:
        out.print(f"  To bring the work into your own clone of {escape(view['repository'])}:")
        out.print(f"    {escape(view['fetch'])}")


def _label(ref: str) -> str:
    """A bundle ref as a person reads it."""
    from routined.runs import kept

    if ref == kept.UNCOMMITTED:
        return "(uncommitted work)"
    if ref == kept.DETACHED:
        return "(detached HEAD)"
    return ref.removeprefix("refs/heads/")


def _nothing_kept(found: dict[str, Any], folder: Path, items: list[kept.Kept] | None) -> str:
    run_id, status = found["id"], found["status"]
    if status not in runs.TERMINAL:
        return f"Nothing is kept for run {run_id} yet: it is {status}."
    if not folder.exists():
        return (
            f"Nothing is kept for run {run_id}: its folder {folder} is gone (run folders are "
            "removed ROUTINED_RUN_FILES_MAX_AGE after the run ended)."
        )
    if items is not None:
        return f"Nothing was kept for run {run_id}: it had no repository to keep."
    if (folder / "workspace").exists():
        # Sealing ends a run that delivered nothing; an older routined kept the
        # workspace as the agent left it.
        return (
            f"Run {run_id}'s workspace is not sealed: do not run git in "
            f"{folder / 'workspace'}, where the agent's configuration would run its "
            "programs. routined seals it as the run ends; a run that ended before this "
            "version of routined kept it as the agent left it."
        )
    return (
        f"Nothing was kept for run {run_id} ({status}): a run that delivered its work keeps "
        "none of it (it is on the origin), and one that ended before its work existed has "
        "none to keep."
    )
