"""Stage: on GitHub, a pull request for each pushed branch and a comment with the
session's link on the pull request or issue that started the run, as the routine asks.

The work is on the origin already: a GitHub call that fails is recorded as an event,
and the run goes on to its end.
"""

from __future__ import annotations

from routined.github import app as github_app
from routined.runs import push, state
from routined.runs.scope import RunSpec, Scope


async def publish(scope: Scope, pushed: list[push.Pushed]) -> None:
    """Open the pull requests and write the comment the routine asks for."""
    spec, settings, ledger = scope.spec, scope.settings, scope.ledger
    github = spec.github
    comment_on = github.comment_on if github.comment else None
    if not ((github.pull_requests and pushed) or comment_on):
        return
    if spec.public_only:
        await ledger.event(
            "github.error",
            "no pull request or comment: they are made as the operator's GitHub App, "
            "which a routine applied with an account's key may not act as",
        )
        return
    try:
        app = github_app.GitHubApp.from_settings(settings)
    except github_app.ForgeError as error:
        await ledger.event("github.error", str(error))
        return
    if app is None:
        await ledger.event(
            "github.error", "the GitHub App is not configured (ROUTINED_GITHUB_APP_ID)"
        )
        return
    session_url = state.session_url(settings.public_url, spec.session_id)
    checkouts = scope.checkouts
    opened = []
    for branch in pushed if github.pull_requests else []:
        checkout = next(c for c in checkouts if c.shown_url == branch.repository)
        repository = github_app.repository_of(checkout.url, settings.github_url)
        if repository is None and github.repository and checkout is checkouts[0]:
            repository = github.repository  # the event's, cloned from a mirror of it
        if repository is None:
            await ledger.event(
                "github.error",
                f"no pull request for {branch.branch}: {branch.repository} is not a "
                f"repository on {settings.github_url}",
            )
            continue
        try:
            url = await app.open_pull_request(
                repository,
                installation_id=github.installation_for(repository),
                head=branch.branch,
                base=checkout.default_branch,
                title=f"{spec.routine}: {branch.branch}",
                body=_pull_request_body(spec, session_url),
            )
        except github_app.ForgeError as error:
            await ledger.event("github.error", str(error))
            continue
        opened.append(url)
        await ledger.event("github.pull_request", f"opened {url}", url=url, branch=branch.branch)
    if comment_on:
        assert github.repository is not None
        lines = [f"routined is running routine **{spec.routine}**: {session_url}"]
        lines += [f"- pull request: {url}" for url in opened]
        try:
            url = await app.comment(
                github.repository,
                comment_on,
                "\n".join(lines),
                installation_id=github.installation_id,
            )
        except github_app.ForgeError as error:
            await ledger.event("github.error", str(error))
        else:
            await ledger.event("github.comment", f"commented {url}", url=url)


def _pull_request_body(spec: RunSpec, session_url: str) -> str:
    github = spec.github
    started = (
        f"It was started by the GitHub event `{github.event}` (delivery {github.delivery_id}).\n"
        if github.event
        else f"It was started by a {spec.trigger_type} trigger.\n"
    )
    return (
        f"Opened by routined for the routine **{spec.routine}**.\n\n"
        f"Session: {session_url}\n\n{started}"
    )
