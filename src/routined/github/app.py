"""GitHub as a forge, through the GitHub App: pull requests and comments after a run.

routined holds the app's private key and mints short-lived installation tokens
(githubkit does both); neither ever enters a sandbox: everything here runs in
the worker, after the agent has stopped and its work has been pushed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from githubkit import AppAuthStrategy, GitHub
from githubkit.cache import MemCacheStrategy
from githubkit.exception import GitHubException

from routined.config import Settings
from routined.errors import OutsideFailure

# The user name GitHub takes with an installation token over https.
TOKEN_USER = "x-access-token"  # noqa: S105 - a fixed user name, not a secret
_SCP_LIKE = re.compile(r"^[^@/:]+@(?P<host>[^/:]+):(?P<path>.+)$")


class ForgeError(OutsideFailure, RuntimeError):
    """A GitHub call failed; the message says which and why."""


@dataclass(frozen=True)
class GitHubApp:
    app_id: str
    private_key: str
    api_url: str
    web_url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> GitHubApp | None:
        """The configured app, or None when ROUTINED_GITHUB_APP_ID is not set."""
        if not settings.github_app_id:
            return None
        key_file = settings.github_private_key_file
        if key_file is None:
            raise ForgeError("ROUTINED_GITHUB_PRIVATE_KEY_FILE: set it to the app's PEM key file")
        try:
            private_key = Path(key_file).read_text()
        except OSError as error:
            raise ForgeError(
                f"ROUTINED_GITHUB_PRIVATE_KEY_FILE: cannot read {key_file}: {error.strerror}"
            ) from None
        return cls(
            settings.github_app_id, private_key, settings.github_api_url, settings.github_url
        )

    def _client(self) -> GitHub[AppAuthStrategy]:
        # A token cache of its own: githubkit's default is shared by the process and
        # keyed without the server, so two servers with one app id would mix tokens.
        return GitHub(
            AppAuthStrategy(self.app_id, self.private_key),
            base_url=self.api_url,
            cache_strategy=MemCacheStrategy(),
            auto_retry=False,
            timeout=30,
        )

    async def open_pull_request(
        self,
        repository: str,
        *,
        installation_id: int | None,
        head: str,
        base: str,
        title: str,
        body: str,
    ) -> str:
        """Open a pull request of `head` into `base`; its web address."""
        owner, name = repository.split("/", 1)
        try:
            github = await self._installation(owner, name, installation_id)
            created = await github.rest.pulls.async_create(
                owner, name, title=title, body=body, head=head, base=base
            )
        except GitHubException as error:
            raise ForgeError(f"opening a pull request of {head} on {repository}: {error}") from None
        return created.parsed_data.html_url

    async def comment(
        self, repository: str, number: int, body: str, *, installation_id: int | None
    ) -> str:
        """Comment on issue or pull request `number`; the comment's web address."""
        owner, name = repository.split("/", 1)
        try:
            github = await self._installation(owner, name, installation_id)
            created = await github.rest.issues.async_create_comment(owner, name, number, body=body)
        except GitHubException as error:
            raise ForgeError(f"commenting on {repository}#{number}: {error}") from None
        return created.parsed_data.html_url

    async def installation_token(self, repository: str, *, installation_id: int | None) -> str:
        """A short-lived token of the app's installation, for git on `repository` only."""
        owner, name = repository.split("/", 1)
        app = self._client()
        try:
            found = await _installation_id(app, owner, name, installation_id)
            minted = await app.rest.apps.async_create_installation_access_token(
                found, repositories=[name]
            )
        except GitHubException as error:
            raise ForgeError(f"an installation token for {repository}: {error}") from None
        return minted.parsed_data.token

    async def _installation(
        self, owner: str, name: str, installation_id: int | None
    ) -> GitHub[Any]:
        app = self._client()
        found = await _installation_id(app, owner, name, installation_id)
        installation: GitHub[Any] = app.with_auth(app.auth.as_installation(found))
        return installation


async def _installation_id(app: GitHub[Any], owner: str, name: str, known: int | None) -> int:
    """The app's installation on a repository: `known` (the event named it), or asked."""
    if known is not None:
        return known
    found = await app.rest.apps.async_get_repo_installation(owner, name)
    return found.parsed_data.id


def with_token(url: str, token: str) -> str:
    """An https URL that authenticates as the app's installation (GitHub's convention
    for installation tokens over git)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{TOKEN_USER}:{token}@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def repository_of(url: str, web_url: str) -> str | None:
    """`owner/name` of a git URL on the GitHub at `web_url`, or None for anywhere else."""
    host = urlsplit(web_url).hostname
    scp = _SCP_LIKE.match(url)
    if scp:
        found_host, path = scp.group("host"), scp.group("path")
    else:
        parts = urlsplit(url)
        found_host, path = parts.hostname, parts.path
    if not host or found_host != host:
        return None
    path = path.strip("/").removesuffix(".git")
    if path.count("/") != 1:
        return None
    return path
