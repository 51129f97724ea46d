"""Stage: the run's folder and its checkouts, from standby or cloned from the mirrors.

Also readies, after a run, the checkouts the routine's next run will need (standby),
and mints the GitHub tokens git fetches and pushes with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from routined import reach, workspace
from routined.agents.home import seed_home
from routined.config import Settings
from routined.github import app as github_app
from routined.runs.failure import Failure, RunFailure
from routined.runs.scope import Host, RunSpec, Scope

log = logging.getLogger(__name__)


async def check_out(scope: Scope) -> None:
    """Make the run's folder and its checkouts (`scope.checkouts`, kept there as soon
    as they are made), with the event's pull request fetched into the first."""
    scope.checkouts = await _prepare(scope)
    scope.checkouts = await _fetch_pull_head(scope)
    for checkout in scope.checkouts:
        await scope.ledger.event(
            "git.clone",
            f"cloned {checkout.shown_url} ({checkout.default_branch})",
            repository=checkout.shown_url,
            path=str(checkout.path),
            default_branch=checkout.default_branch,
        )


async def _prepare(scope: Scope) -> list[workspace.Checkout]:
    host, spec, run_dir = scope.host, scope.spec, scope.run_dir
    await host.check_sandbox()
    # Routined's alone (whatever the umask): only the sandbox user's own folders
    # in it are handed over, and only to that user.
    for private in (scope.settings.runs_dir, run_dir):
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
        private.chmod(0o700)
    for name in ("workspace", "home", "tmp", "private"):
        (run_dir / name).mkdir(mode=0o700, exist_ok=True)
    # A fresh home, with only a seed of Claude Code's config, so the session
    # skips first-start work.
    seed_home(run_dir / "home", host.seed_file)
    await workspace.hand_over(
        [run_dir / "workspace", run_dir / "home", run_dir / "tmp"], host.owner
    )
    taken: set[str] = set()
    destinations = [
        run_dir / "workspace" / workspace.checkout_name(url, taken) for url in spec.repositories
    ]
    fetched = await authenticated(scope.settings, spec, spec.repositories, Failure.CLONE_FAILED)
    try:
        return list(
            await asyncio.gather(
                *(
                    _checkout(host, spec, number, (url, authenticated_url), destination)
                    for number, (url, authenticated_url, destination) in enumerate(
                        zip(spec.repositories, fetched, destinations, strict=True)
                    )
                )
            )
        )
    except workspace.GitError as error:
        raise RunFailure(Failure.CLONE_FAILED, str(error)) from error


async def _fetch_pull_head(scope: Scope) -> list[workspace.Checkout]:
    """Fetch the event's pull request as `pr/N` into the first repository (see
    docs/github.md). Not from a fork: its commits could reach the origin on a
    claude/ branch, where the repository's own workflows would run them. A fetch
    that fails is recorded; the run goes on without the branch."""
    pull, checkouts = scope.spec.github.pull_request, scope.checkouts
    if not pull or not checkouts:
        return checkouts
    number = pull.number
    if pull.from_fork:
        await scope.ledger.event(
            "git.pull_request", f"pull request #{number} comes from a fork: not fetched"
        )
        return checkouts
    try:
        first, branch = await workspace.fetch_pull_head(
            checkouts[0], number, owner=scope.host.owner
        )
    except workspace.GitError as error:
        await scope.ledger.event("git.pull_request", f"pull request #{number} not fetched: {error}")
        return checkouts
    await scope.ledger.event("git.pull_request", f"fetched pull request #{number} as {branch}")
    return [first, *checkouts[1:]]


async def _checkout(
    host: Host, spec: RunSpec, number: int, urls: tuple[str, str], destination: Path
) -> workspace.Checkout:
    """The standby checkout (brought up to the mirror if it has moved), else a clone
    made now. `urls`: the repository's, and the same with its token."""
    url, with_token = urls
    settings, owner = host.settings, host.owner
    network: list[str] = []
    if spec.public_only and workspace.local_repository(url) is None:
        try:
            network = await reach.git_pin(url, settings.allow_private_networks)
        except reach.Unreachable as error:
            raise RunFailure(
                Failure.CLONE_FAILED, f"{workspace.display_url(url)}: {error}"
            ) from None
    mirror = await workspace.sync_mirror(
        with_token, settings.home / "mirrors", owner=owner, network=network
    )
    standby = standby_path(settings, spec, number, url)
    ready = await workspace.take_standby(mirror, standby, destination, owner=owner)
    checkout = ready or await workspace.clone(mirror, destination, owner=owner)
    return dataclasses.replace(checkout, network=tuple(network))


async def authenticated(
    settings: Settings, spec: RunSpec, urls: Sequence[str], failure: Failure
) -> list[str]:
    """`urls`, those of repositories on GitHub with a token of the app's installation
    in them (minted now: it lives an hour). git gets it outside the sandbox only;
    the agent's checkouts name their origin without it.

    Never for a routine applied with an account's key: the app is the operator's,
    installed on the operator's repositories, and no account's key may act as it.
    Such a routine reaches GitHub as anyone does, or with its URL's own credentials.
    """
    if spec.public_only:
        return list(urls)
    try:
        app = github_app.GitHubApp.from_settings(settings)
    except github_app.ForgeError as error:
        raise RunFailure(failure, str(error)) from None
    github = spec.github
    result = []
    for url in urls:
        repository = github_app.repository_of(url, settings.github_url)
        parts = urlsplit(url)
        own_credentials = parts.username not in (None, github_app.TOKEN_USER)
        if (
            app is None
            or repository is None
            or parts.scheme not in ("http", "https")
            or own_credentials
        ):
            result.append(url)  # SSH, the URL's own credentials, or not GitHub
            continue
        same = repository.lower() == str(github.repository or "").lower()
        try:
            token = await app.installation_token(
                repository, installation_id=github.installation_id if same else None
            )
        except github_app.ForgeError as error:
            raise RunFailure(failure, str(error)) from None
        result.append(github_app.with_token(url, token))
    return result


def standby_path(settings: Settings, spec: RunSpec, number: int, url: str) -> Path:
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    return settings.home / "standby" / spec.routine_id / f"{number}-{key}"


async def prepare_standbys(host: Host, spec: RunSpec) -> None:
    """Ready the next run's checkouts, after this run, off its critical path."""
    settings = host.settings
    wanted = {standby_path(settings, spec, n, url) for n, url in enumerate(spec.repositories)}
    folder = settings.home / "standby" / spec.routine_id
    for stale in folder.glob("*") if folder.is_dir() else ():
        if stale not in wanted:
            await workspace.remove(stale)
    for number, url in enumerate(spec.repositories):
        # The mirror as this run fetched it: the run that takes the checkout
        # fetches anyway, and takes it only if nothing moved.
        mirror = workspace.mirror_of(url, settings.home / "mirrors")
        try:
            await workspace.prepare_standby(
                mirror, standby_path(settings, spec, number, url), owner=host.owner
            )
        except (workspace.GitError, OSError):
            log.warning("could not ready a standby checkout of %s", url, exc_info=True)
