"""A stand-in for GitHub's REST API as a GitHub App sees it, on loopback, for tests.

It follows GitHub's OpenAPI description (tests/fixtures/github-rest holds the extract).
App-JWT endpoints (`POST /app/installations/{id}/access_tokens`,
`GET /repos/{o}/{r}/installation`) check the RS256 signature with PyJWT, and `iss`, `iat`
and `exp` as GitHub documents. Installation-token endpoints (`GET
/installation/repositories` with `Link` pages, `GET /repos/{o}/{r}`, `POST
/repos/{o}/{r}/pulls`, `POST …/issues/{n}/comments`, `PATCH …/issues/comments/{id}`) take
a token that expires and reaches only its repositories. Bodies have every field of the
contract's examples, filled in from the request; errors are `basic-error` or
`validation-error`. `path_prefix="/api/v3"` makes it a GitHub Enterprise Server.

Tests set state (`add_installation`, `add_repository` — optionally a bare git repository —,
`set_branch`, `add_issue`, `fail`, `advance`) and read `pulls()`, `comments()`, `requests`.

Run by hand: `python -m routined.testing.fake_github --port 8766 --key-file app.pem
--installation 7:acme:widgets,gadgets [--repo acme/widgets=/srv/git/widgets.git]`.

Over 500 lines and still one concept: one stand-in for one API, its endpoints beside
the state they share.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import itertools
import json
import re
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from routined.testing.loopback import Loopback

Body = dict[str, Any]
Reply = tuple[int, Body, dict[str, str]]

API_VERSIONS = ("2022-11-28", "2026-03-10")  # the first is the default
# Fields API version 2026-03-10 removes (contract.md, "Breaking changes").
_REMOVED_2026 = {"pull": ("merge_commit_sha", "assignee"), "repository": ("has_downloads",)}
_LEVELS = {"read": 1, "write": 2, "admin": 3}
_GRANTED = {"contents": "write", "issues": "write", "metadata": "read", "pull_requests": "write"}
_NO_JWT = "A JSON web token could not be decoded"
_REPO_URLS = {
    "archive": "/{archive_format}{/ref}", "assignees": "/assignees{/user}",
    "blobs": "/git/blobs{/sha}", "branches": "/branches{/branch}",
    "collaborators": "/collaborators{/collaborator}", "comments": "/comments{/number}",
    "commits": "/commits{/sha}", "compare": "/compare/{base}...{head}",
    "contents": "/contents/{+path}", "git_commits": "/git/commits{/sha}",
    "git_refs": "/git/refs{/sha}", "git_tags": "/git/tags{/sha}",
    "issue_comment": "/issues/comments{/number}", "issue_events": "/issues/events{/number}",
    "issues": "/issues{/number}", "keys": "/keys{/key_id}", "labels": "/labels{/name}",
    "milestones": "/milestones{/number}", "pulls": "/pulls{/number}",
    "notifications": "/notifications{?since,all,participating}", "releases": "/releases{/id}",
    "statuses": "/statuses/{sha}", "trees": "/git/trees{/sha}",
    **{name: f"/{name}" for name in ["contributors", "deployments", "downloads", "events",
       "forks", "hooks", "languages", "merges", "stargazers", "subscribers", "subscription",
       "tags", "teams"]},
}  # fmt: skip
_USER_URLS = {
    "followers": "/followers", "following": "/following{/other_user}",
    "gists": "/gists{/gist_id}", "starred": "/starred{/owner}{/repo}",
    "subscriptions": "/subscriptions", "organizations": "/orgs", "repos": "/repos",
    "events": "/events{/privacy}", "received_events": "/received_events",
}  # fmt: skip
_R = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
# method, path, credential, handler, docs page (the `documentation_url` of its errors)
_ROUTES = [
    ("POST", r"/app/installations/(?P<id>\d+)/access_tokens", "jwt", "_create_token",
     "apps/apps#create-an-installation-access-token-for-an-app"),
    ("GET", _R + "/installation", "jwt", "_repo_installation",
     "apps/apps#get-a-repository-installation-for-the-authenticated-app"),
    ("GET", r"/installation/repositories", "token", "_list_repositories",
     "apps/installations#list-repositories-accessible-to-the-app-installation"),
    ("GET", _R, "token", "_get_repository", "repos/repos#get-a-repository"),
    ("POST", _R + "/pulls", "token", "_create_pull", "pulls/pulls#create-a-pull-request"),
    ("POST", _R + r"/issues/(?P<number>\d+)/comments", "token", "_create_comment",
     "issues/comments#create-an-issue-comment"),
    ("PATCH", _R + r"/issues/comments/(?P<id>\d+)", "token", "_update_comment",
     "issues/comments#update-an-issue-comment"),
]  # fmt: skip


def generate_app_key(path: Path | None = None) -> str:
    """A new RSA key as the PEM GitHub hands out (PKCS#1), written owner-only to `path` when
    given (for `ROUTINED_GITHUB_PRIVATE_KEY_FILE`)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    if path is not None:
        path.touch(mode=0o600)
        path.write_text(pem)
    return pem


@dataclass
class Repository:
    full_name: str
    id: int
    default_branch: str = "main"
    branches: dict[str, str] = field(default_factory=dict)  # name → sha, unless git_dir
    git_dir: Path | None = None  # a bare repository whose refs/heads are the branches
    private: bool = True
    numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    issues: dict[int, str] = field(default_factory=dict)  # number → title
    created_at: str = ""


@dataclass
class Installation:
    id: int
    account: str
    repositories: list[str]  # full names
    account_type: str = "Organization"
    permissions: dict[str, str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    repository_selection: str = "selected"
    created_at: str = ""


@dataclass
class _Token:
    installation: Installation
    expires_at: float
    permissions: dict[str, str]
    repositories: list[str] | None  # lower-case full names; None: all the installation's


@dataclass
class RecordedRequest:
    at: float
    method: str
    path: str  # without the prefix and the query
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any
    status: int = 0


class _Failure(Exception):
    def __init__(self, status: int, message: str, errors: list[Body] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors


@dataclass
class _Call:
    params: dict[str, str]
    query: dict[str, str]
    body: Body
    token: _Token | None


@dataclass
class FakeGitHub(Loopback):
    """Start with `start()` (or as a context manager); point the client at `base_url`."""

    app_id: int = 4242
    client_id: str = "Iv23liFakeRoutined01"
    app_slug: str = "routined-test"
    private_key: str = ""  # PEM; generated when empty
    path_prefix: str = ""  # "/api/v3" for GitHub Enterprise Server
    web_url: str = ""  # origin of html_url values; the server's own origin when empty
    token_lifetime: float = 3600.0  # seconds; GitHub's is one hour
    bot_user_id: int = 41898282
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.private_key = self.private_key or generate_app_key()
        # Only the public half is used, to verify: checking the private key's consistency
        # would cost ~35 ms a fake and buy a test nothing.
        key = serialization.load_pem_private_key(self.private_key.encode(), password=None,
                                                 unsafe_skip_rsa_key_validation=True)  # fmt: skip
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("a GitHub App key is an RSA key")
        self.public_key = key.public_key()
        self._lock = threading.RLock()
        self._skew = 0.0
        self._ids = itertools.count(1001)
        self._repos: dict[str, Repository] = {}  # by lower-case full name, as GitHub ignores case
        self._accounts: dict[str, int] = {}
        self._installations: dict[int, Installation] = {}
        self._tokens: dict[str, _Token] = {}
        self._pulls: list[Body] = []
        self._comments: list[tuple[str, Body]] = []  # (repository key, comment)
        self._failures: list[tuple[str, re.Pattern[str], int, str, list[int]]] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path_prefix}"

    @property
    def web_origin(self) -> str:
        return (self.web_url or f"http://{self.host}:{self.port}").rstrip("/")

    # -- state and inspection ----------------------------------------------------

    def add_repository(self, full_name: str, *, branches: Iterable[str] = ("main",),
                       default_branch: str = "main", git_dir: Path | None = None,
                       private: bool = True) -> Repository:  # fmt: skip
        """A repository; with `git_dir` (a bare repository) its branches, their heads and
        the default branch are read from git at each request."""
        with self._lock:
            repo = Repository(full_name, next(self._ids) + 100000, default_branch, {}, git_dir)
            repo.private, repo.created_at = private, _stamp(self.now())
            self._repos[full_name.lower()] = repo
            for branch in branches if git_dir is None else ():
                self.set_branch(full_name, branch)
            return repo

    def set_branch(self, full_name: str, branch: str, sha: str | None = None) -> str:
        """Create or move a branch of a repository without `git_dir`; returns its head."""
        with self._lock:
            seed = f"{full_name}:{branch}:{next(self._ids)}".encode()
            sha = sha or hashlib.sha256(seed).hexdigest()[:40]
            self._repos[full_name.lower()].branches[branch] = sha
            return sha

    def add_installation(self, installation_id: int, account: str, repositories: Iterable[str],
                         *, account_type: str = "Organization",
                         permissions: Mapping[str, str] | None = None,
                         events: Iterable[str] = ("issues", "issue_comment", "pull_request"),
                         repository_selection: str = "selected") -> Installation:  # fmt: skip
        """Install the app on `account` for `repositories` (names or full names; unknown
        ones are added with a `main` branch). Default permissions: contents, issues and pull
        requests write, metadata read."""
        with self._lock:
            names = [r if "/" in r else f"{account}/{r}" for r in repositories]
            for name in names:
                if name.lower() not in self._repos:
                    self.add_repository(name)
            granted, stamp = dict(permissions or _GRANTED), _stamp(self.now())
            installation = Installation(installation_id, account, names, account_type, granted,
                                        list(events), repository_selection, stamp)  # fmt: skip
            self._installations[installation_id] = installation
            return installation

    def add_issue(self, full_name: str, title: str) -> int:
        """An issue to comment on (issues and pull requests share numbers); its number."""
        with self._lock:
            repo = self._repos[full_name.lower()]
            number = next(repo.numbers)
            repo.issues[number] = title
            return number

    def mint_token(self, installation_id: int) -> str:
        """An installation token, as if the app had asked for one with its JWT."""
        with self._lock:
            reply = self._create_token(_Call({"id": str(installation_id)}, {}, {}, None))
            return str(reply[1]["token"])

    def fail(self, method: str, path: str, status: int, message: str, *, times: int = 1) -> None:
        """The next `times` requests whose path (regex) matches get this error instead."""
        with self._lock:
            self._failures.append((method, re.compile(path), status, message, [times]))

    def advance(self, seconds: float) -> None:
        """Move the fake's clock on, so that tokens and JWTs expire without sleeping."""
        with self._lock:
            self._skew += seconds

    def now(self) -> float:
        return time.time() + self._skew

    def pulls(self, full_name: str | None = None) -> list[Body]:
        with self._lock:
            return [copy.deepcopy(p) for p in self._pulls if _in(full_name, p)]

    def comments(self, full_name: str | None = None) -> list[Body]:
        with self._lock:
            return [copy.deepcopy(c) for key, c in self._comments
                    if full_name is None or key == full_name.lower()]  # fmt: skip

    # -- answering ---------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], raw: bytes) -> Reply:
        """One request (header names in lower case) → status, JSON body, extra headers."""
        split = urlsplit(target)
        path, query = split.path, dict(parse_qsl(split.query))
        if self.path_prefix:  # outside the prefix there is no API
            inside = path.startswith(self.path_prefix + "/")
            path = path.removeprefix(self.path_prefix) if inside else "/"
        try:
            body = json.loads(raw) if raw.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = raw.decode(errors="replace")
        version = headers.get("x-github-api-version", API_VERSIONS[0])
        record = RecordedRequest(self.now(), method, path, query, dict(headers), body)
        docs = "https://docs.github.com/rest"
        with self._lock:
            self.requests.append(record)
            try:
                if version not in API_VERSIONS:
                    raise _Failure(400, f"API version {version} is not supported.")
                for verb, pattern, status, message, left in self._failures:
                    if verb == method and left[0] > 0 and pattern.fullmatch(path):
                        left[0] -= 1
                        raise _Failure(status, message)
                for verb, route, credential, handler, page in _ROUTES:
                    match = re.fullmatch(route, path)
                    if match is None or verb != method:
                        continue
                    docs = f"https://docs.github.com/rest/{page}"
                    token = self._authenticate(credential, headers.get("authorization", ""))
                    if raw.strip() and not isinstance(body, dict):
                        raise _Failure(400, "Problems parsing JSON")
                    call = _Call(match.groupdict(), query, body or {}, token)
                    reply: Reply = getattr(self, handler)(call)
                    break
                else:
                    raise _Failure(404, "Not Found")
            except _Failure as failure:
                error: Body = {"message": failure.message, "documentation_url": docs}
                if failure.errors is not None:
                    error["errors"] = failure.errors
                reply = failure.status, {**error, "status": str(failure.status)}, {}
            record.status = reply[0]
        if version == "2026-03-10" and reply[0] < 300:
            _drop_2026(reply[1])
        return reply[0], reply[1], {"x-github-api-version-selected": version, **reply[2]}

    def _authenticate(self, credential: str, authorization: str) -> _Token | None:
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() not in ("bearer", "token") or not secret:
            raise _Failure(401, "Requires authentication")
        if credential == "token":
            # An app JWT is no credential here, nor is an unknown or expired token.
            token = self._tokens.get(secret)
            if token is None or token.expires_at <= self.now():
                raise _Failure(401, "Bad credentials")
            return token
        # Only the app's JWT will do: an installation token fails to decode like any other.
        try:  # the signature by PyJWT; the time claims below, by the fake's own clock
            claims = jwt.decode(secret, self.public_key, algorithms=["RS256"],
                                options={"verify_exp": False, "verify_iat": False})  # fmt: skip
        except jwt.PyJWTError as error:
            raise _Failure(401, _NO_JWT) from error
        now, exp, iat = self.now(), claims.get("exp"), claims.get("iat")
        if not isinstance(iat, int) or isinstance(iat, bool) or iat > now:
            raise _Failure(401, "'Issued at' claim ('iat') must be an Integer representing "
                           "the time that the assertion was issued")  # fmt: skip
        if not isinstance(exp, int | float) or exp <= now:
            raise _Failure(401, "'Expiration time' claim ('exp') must be a numeric value repre"
                           "senting the future time at which the assertion expires")  # fmt: skip
        if exp > now + 600:
            raise _Failure(401, "'Expiration time' claim ('exp') is too far in the future")
        if str(claims.get("iss")) not in (str(self.app_id), self.client_id):
            raise _Failure(401, "'Issuer' claim ('iss') must be the app's ID or client ID")
        return None

    # -- operations ----------------------------------------------------------------

    def _create_token(self, call: _Call) -> Reply:
        installation = self._installations.get(int(call.params["id"]))
        if installation is None:
            raise _Failure(404, "Not Found")
        names, ids = call.body.get("repositories"), call.body.get("repository_ids")
        wanted = None
        if names is not None or ids is not None:
            by_id = {r.id: key for key, r in self._repos.items()}
            wanted = {f"{installation.account}/{n}".lower() for n in names or []}
            wanted |= {by_id.get(i, "?") for i in ids or []}
            if len(wanted) > 500 or not wanted <= {n.lower() for n in installation.repositories}:
                raise _Failure(422, "There is at least one repository that does not exist or "
                               "is not accessible to the parent installation.")  # fmt: skip
        # Permissions may only narrow what the installation was granted.
        permissions = call.body.get("permissions") or installation.permissions
        if not isinstance(permissions, dict) or any(
            _LEVELS.get(installation.permissions.get(k, ""), 0) < _LEVELS.get(v, 9)
            for k, v in permissions.items()
        ):
            raise _Failure(422, "The permissions requested are not granted to this installation.")
        # Longer than the classic 40 characters, like the stateless `ghs_APPID_JWT` format.
        secret = f"ghs_{self.app_id}_{secrets.token_urlsafe(48)}"
        token = _Token(installation, self.now() + self.token_lifetime, permissions,
                       None if wanted is None else sorted(wanted))  # fmt: skip
        self._tokens[secret] = token
        selection = "selected" if wanted is not None else installation.repository_selection
        body: Body = {"token": secret, "expires_at": _stamp(token.expires_at),
                "permissions": permissions, "repository_selection": selection}  # fmt: skip
        if wanted is not None:  # GitHub lists repositories only when the request named them
            body["repositories"] = [self._repository(k, token) for k in self._reach(token)]
        return 201, body, {}

    def _repo_installation(self, call: _Call) -> Reply:
        key = f"{call.params['owner']}/{call.params['repo']}".lower()
        for installation in self._installations.values():
            if key in (name.lower() for name in installation.repositories):
                return 200, self._installation(installation), {}
        raise _Failure(404, "Not Found")

    def _list_repositories(self, call: _Call) -> Reply:
        assert call.token is not None
        try:  # GitHub caps per_page at 100 and ignores values it cannot read
            per_page = min(max(int(call.query.get("per_page", 30)), 1), 100)
            page = max(int(call.query.get("page", 1)), 1)
        except ValueError:
            per_page, page = 30, 1
        keys = self._reach(call.token)
        shown = keys[(page - 1) * per_page : page * per_page]
        body = {"total_count": len(keys),
                "repository_selection": call.token.installation.repository_selection,
                "repositories": [self._repository(k, call.token) for k in shown]}  # fmt: skip
        last = max(-(-len(keys) // per_page), 1)

        def link(number: int, rel: str) -> str:
            query = urlencode({**call.query, "page": number})
            return f'<{self.base_url}/installation/repositories?{query}>; rel="{rel}"'

        rels = [link(page - 1, "prev")] if page > 1 else []
        rels += [link(page + 1, "next"), link(last, "last")] if page < last else []
        rels += [link(1, "first")] if page > 1 else []
        return 200, body, ({"link": ", ".join(rels)} if rels else {})

    def _get_repository(self, call: _Call) -> Reply:
        return 200, self._repository(self._visible(call), call.token, full=True), {}

    def _create_pull(self, call: _Call) -> Reply:
        repo = self._repos[self._visible(call)]
        _permit(call, "pull_requests")
        # Turning an issue into a pull request (`issue` instead of `title`) is not faked.
        _check(call.body, {"title": str, "head": str, "base": str, "body": str, "head_repo": str,
                           "draft": bool, "maintainer_can_modify": bool},
               required=("base", "head", "title"))  # fmt: skip
        b = call.body
        owner = repo.full_name.split("/")[0]
        head_owner, _, ref = b["head"].rpartition(":")
        branches = self._branches(repo)
        # Only same-repository pull requests: the fake knows no forks.
        if head_owner.lower() not in ("", owner.lower()) or ref not in branches:
            raise _rejected(field="head", code="invalid")
        if b.get("head_repo", repo.full_name).lower() != repo.full_name.lower():
            raise _rejected(field="head_repo", code="invalid")
        if b["base"] not in branches:
            raise _rejected(field="base", code="invalid")
        label = f"{owner}:{ref}"
        open_pulls = [p for p in self._pulls if _in(repo.full_name, p) and p["state"] == "open"]
        if any(p["head"]["label"] == label and p["base"]["ref"] == b["base"] for p in open_pulls):
            raise _rejected(code="custom", message=f"A pull request already exists for {label}.")
        commits = self._commits(repo, branches[b["base"]], branches[ref])
        if commits == 0:
            raise _rejected(code="custom", message=f"No commits between {b['base']} and {ref}")
        pull = self._pull(repo, next(repo.numbers), b["title"], b.get("body"), ref, b["base"],
                          branches)  # fmt: skip
        pull.update(draft=b.get("draft", False), commits=commits)
        self._pulls.append(pull)
        return 201, copy.deepcopy(pull), {"location": pull["url"]}

    def _create_comment(self, call: _Call) -> Reply:
        key = self._visible(call)
        number = int(call.params["number"])
        pull = any(p["number"] == number and _in(key, p) for p in self._pulls)
        if not pull and number not in self._repos[key].issues:
            raise _Failure(404, "Not Found")
        _permit(call, "issues", *(["pull_requests"] if pull else []))
        _check(call.body, {"body": str}, required=("body",))
        comment = self._comment(key, number, pull, call.body["body"])
        self._comments.append((key, comment))
        return 201, copy.deepcopy(comment), {"location": comment["url"]}

    def _update_comment(self, call: _Call) -> Reply:
        wanted = (self._visible(call), int(call.params["id"]))
        found = [c for key, c in self._comments if (key, c["id"]) == wanted]
        if not found:
            raise _Failure(404, "Not Found")
        _permit(call, "issues", "pull_requests")
        _check(call.body, {"body": str}, required=("body",))
        found[0].update(body=call.body["body"], updated_at=_stamp(self.now()))
        return 200, copy.deepcopy(found[0]), {}

    def _visible(self, call: _Call) -> str:
        """The key of the repository the call names, if its token reaches it (GitHub says
        404 rather than admit that a repository it will not show exists)."""
        assert call.token is not None
        key = f"{call.params['owner']}/{call.params['repo']}".lower()
        if key not in self._reach(call.token):
            raise _Failure(404, "Not Found")
        return key

    def _reach(self, token: _Token) -> list[str]:
        """What a token reaches now: one minted for all of an installation's repositories
        follows the installation, as on GitHub."""
        names = token.repositories
        if names is None:
            names = sorted(name.lower() for name in token.installation.repositories)
        return [key for key in names if key in self._repos]

    def _branches(self, repo: Repository) -> dict[str, str]:
        if repo.git_dir is None:
            return dict(repo.branches)
        # lstrip=2 rather than :short, which may keep "heads/" when a tag has the same name
        refs = _git(repo.git_dir, "for-each-ref", "--format=%(refname:lstrip=2) %(objectname)",
                    "refs/heads")  # fmt: skip
        return dict(line.rsplit(" ", 1) for line in refs.splitlines())

    def _commits(self, repo: Repository, base: str, head: str) -> int:
        if repo.git_dir is None:
            return 0 if base == head else 1
        return int(_git(repo.git_dir, "rev-list", "--count", f"{base}..{head}") or 0)

    # -- bodies, shaped like the contract's example bodies ---------------------------
    # fmt: off

    def _user(self, login: str, kind: str, user_id: int) -> Body:
        api = f"{self.base_url}/users/{quote(login)}"
        html = f"{self.web_origin}/" + (f"apps/{self.app_slug}" if kind == "Bot" else login)
        return {
            "login": login, "id": user_id, "node_id": _node(kind, user_id),
            "avatar_url": f"{self.web_origin}/avatars/{quote(login)}", "gravatar_id": "",
            "url": api, "html_url": html,
            **{f"{name}_url": api + suffix for name, suffix in _USER_URLS.items()},
            "type": kind, "site_admin": False,
        }

    def _account(self, login: str) -> Body:
        kinds = {i.account.lower(): i.account_type for i in self._installations.values()}
        user_id = self._accounts.setdefault(login.lower(), len(self._accounts) + 501)
        return self._user(login, kinds.get(login.lower(), "User"), user_id)

    def _bot(self) -> Body:
        return self._user(f"{self.app_slug}[bot]", "Bot", self.bot_user_id)

    def _repository(self, key: str, token: _Token | None, *, full: bool = False) -> Body:
        repo = self._repos[key]
        owner, name = repo.full_name.split("/")
        api, web = f"{self.base_url}/repos/{repo.full_name}", f"{self.web_origin}/{repo.full_name}"
        host, stamp = urlsplit(self.web_origin).netloc, repo.created_at
        push = token is not None and token.permissions.get("contents") in ("write", "admin")
        if repo.git_dir is not None:
            head = _git(repo.git_dir, "symbolic-ref", "--short", "HEAD").strip()
            repo.default_branch = head or repo.default_branch
        body: Body = {
            "id": repo.id, "node_id": _node("Repository", repo.id), "name": name,
            "full_name": repo.full_name, "owner": self._account(owner), "private": repo.private,
            "html_url": web, "description": None, "fork": False, "url": api,
            **{f"{kind}_url": api + suffix for kind, suffix in _REPO_URLS.items()},
            "git_url": f"git://{host}/{repo.full_name}.git",
            "ssh_url": f"git@{host}:{repo.full_name}.git", "clone_url": f"{web}.git",
            "mirror_url": None, "svn_url": web, "homepage": None, "language": None,
            "forks_count": 0, "forks": 0, "stargazers_count": 0, "watchers_count": 0,
            "watchers": 0, "size": 0, "default_branch": repo.default_branch,
            "open_issues_count": 0, "open_issues": 0, "is_template": False, "topics": [],
            "has_issues": True, "has_projects": True, "has_wiki": True, "has_pages": False,
            "has_downloads": True, "has_discussions": False, "archived": False,
            "disabled": False, "visibility": "private" if repo.private else "public",
            "pushed_at": stamp, "created_at": stamp, "updated_at": stamp,
            "permissions": {"admin": False, "maintain": False, "push": push, "triage": push,
                            "pull": True},
            "allow_rebase_merge": True, "template_repository": None, "temp_clone_token": "",
            "allow_squash_merge": True, "allow_auto_merge": False,
            "delete_branch_on_merge": False, "allow_merge_commit": True, "allow_forking": True,
            "web_commit_signoff_required": False, "subscribers_count": 0, "network_count": 0,
            "license": None, "custom_properties": {},
        }
        if full and body["owner"]["type"] == "Organization":
            body["organization"] = body["owner"]
        return body

    def _installation(self, installation: Installation) -> Body:
        account, number = self._account(installation.account), installation.id
        org = installation.account_type == "Organization"
        settings = f"organizations/{installation.account}/settings" if org else "settings"
        if org:  # an installation's organization links to /orgs/, as GitHub's example shows
            api = f"{self.base_url}/orgs/{quote(installation.account)}"
            account.update(url=api, repos_url=f"{api}/repos", events_url=f"{api}/events")
        stamp = installation.created_at
        return {
            "id": number, "account": account,
            "repository_selection": installation.repository_selection,
            "access_tokens_url": f"{self.base_url}/app/installations/{number}/access_tokens",
            "repositories_url": f"{self.base_url}/installation/repositories",
            "html_url": f"{self.web_origin}/{settings}/installations/{number}",
            "app_id": self.app_id, "client_id": self.client_id, "target_id": account["id"],
            "target_type": installation.account_type, "permissions": installation.permissions,
            "events": installation.events, "created_at": stamp, "updated_at": stamp,
            "single_file_name": None, "has_multiple_single_files": False,
            "single_file_paths": [], "app_slug": self.app_slug,
            "suspended_at": None, "suspended_by": None,
        }

    def _pull(self, repo: Repository, number: int, title: str | None, text: str | None,
              head: str, base: str, branches: Mapping[str, str]) -> Body:
        api, web = f"{self.base_url}/repos/{repo.full_name}", f"{self.web_origin}/{repo.full_name}"
        url, pull_id, now = f"{api}/pulls/{number}", next(self._ids), _stamp(self.now())
        owner = self._account(repo.full_name.split("/")[0])
        ends = {side: {"label": f"{owner['login']}:{ref}", "ref": ref, "sha": branches[ref],
                       "user": owner, "repo": self._repository(repo.full_name.lower(), None)}
                for side, ref in (("head", head), ("base", base))}
        links = {
            "self": url, "html": f"{web}/pull/{number}", "issue": f"{api}/issues/{number}",
            "comments": f"{api}/issues/{number}/comments", "review_comments": f"{url}/comments",
            "review_comment": f"{api}/pulls/comments{{/number}}", "commits": f"{url}/commits",
            "statuses": f"{api}/statuses/{branches[head]}",
        }
        return {
            "url": url, "id": pull_id, "node_id": _node("PullRequest", pull_id),
            "html_url": links["html"], "diff_url": f"{links['html']}.diff",
            "patch_url": f"{links['html']}.patch", "issue_url": links["issue"],
            "commits_url": links["commits"], "review_comments_url": links["review_comments"],
            "review_comment_url": links["review_comment"], "comments_url": links["comments"],
            "statuses_url": links["statuses"], "number": number, "state": "open",
            "locked": False, "title": title, "user": self._bot(), "body": text, "labels": [],
            "milestone": None, "active_lock_reason": None, "created_at": now, "updated_at": now,
            "closed_at": None, "merged_at": None, "merge_commit_sha": None, "assignee": None,
            "assignees": [], "requested_reviewers": [], "requested_teams": [], **ends,
            "_links": {rel: {"href": href} for rel, href in links.items()},
            "author_association": "NONE", "auto_merge": None, "draft": False, "merged": False,
            # GitHub works mergeability and diff stats out afterwards: unknown at creation.
            "mergeable": None, "rebaseable": None, "mergeable_state": "unknown",
            "merged_by": None, "comments": 0, "review_comments": 0,
            "maintainer_can_modify": False, "commits": 1, "additions": 0, "deletions": 0,
            "changed_files": 0,
        }

    def _comment(self, key: str, number: int, pull: bool, text: str) -> Body:
        full_name, comment_id = self._repos[key].full_name, next(self._ids)
        now = _stamp(self.now())
        api = f"{self.base_url}/repos/{full_name}"
        page = f"{self.web_origin}/{full_name}/{'pull' if pull else 'issues'}/{number}"
        return {
            "id": comment_id, "node_id": _node("IssueComment", comment_id),
            "url": f"{api}/issues/comments/{comment_id}",
            "html_url": f"{page}#issuecomment-{comment_id}", "body": text, "user": self._bot(),
            "created_at": now, "updated_at": now, "issue_url": f"{api}/issues/{number}",
            "author_association": "NONE", "pin": None, "minimized": None,
        }

    # fmt: on


def _check(body: Mapping[str, Any], kinds: Mapping[str, type], *, required: Iterable[str]) -> None:
    """GitHub's schema check of a request body: missing fields first, then wrong types."""
    missing = [name for name in required if name not in body]
    if missing:
        names = ", ".join(f'"{f}"' for f in missing)
        verb = "wasn't" if len(missing) == 1 else "weren't"
        raise _Failure(422, f"Invalid request.\n\n{names} {verb} supplied.")
    for name, kind in kinds.items():
        value = body.get(name)
        if name in body and not isinstance(value, kind):
            wanted = {str: "a string", bool: "a boolean"}[kind]
            raise _Failure(422, f"Invalid request.\n\nFor 'properties/{name}', "
                           f"{json.dumps(value)} is not {wanted}.")  # fmt: skip


def _permit(call: _Call, *any_of: str) -> None:
    assert call.token is not None
    if not any(call.token.permissions.get(p) in ("write", "admin") for p in any_of):
        raise _Failure(403, "Resource not accessible by integration")


def _rejected(**error: str) -> _Failure:
    return _Failure(422, "Validation Failed", [{"resource": "PullRequest", **error}])


def _in(full_name: str | None, pull: Body) -> bool:
    return full_name is None or str(pull["base"]["repo"]["full_name"]).lower() == full_name.lower()


def _drop_2026(body: Any) -> None:
    """Remove, in place, the fields API version 2026-03-10 no longer has."""
    kind = "pull" if "merge_commit_sha" in body else "repository" if "full_name" in body else ""
    for name in _REMOVED_2026.get(kind, ()):
        body.pop(name, None)
    for value in body.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                _drop_2026(item)


def _node(kind: str, number: int) -> str:
    """GitHub's legacy global node id: `MDQ6VXNlcjE=` is `04:User1`."""
    return base64.b64encode(f"0{len(kind)}:{kind}{number}".encode()).decode()


def _stamp(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def _git(git_dir: Path, *args: str) -> str:
    command = ["git", f"--git-dir={git_dir}", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout


class _Handler(BaseHTTPRequestHandler):
    owner: FakeGitHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes: with Nagle on, the body waits for the
        # client's delayed ACK, 40 ms a response on a kept-alive connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, payload, extra = self.owner.handle(self.command, self.path, headers, raw)
        encoded = json.dumps(payload).encode()
        if self.command == "GET" and status == 200:  # conditional requests: the contract's 304
            extra["etag"] = f'W/"{hashlib.sha256(encoded).hexdigest()[:32]}"'
            if headers.get("if-none-match") == extra["etag"]:
                status, encoded = 304, b""
        self.send_response(status)
        if encoded:
            self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("content-length", str(len(encoded)))
        self.send_header("x-github-request-id", secrets.token_hex(8).upper())
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(encoded)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--prefix", default="", help='"/api/v3" to act as GitHub Enterprise Server')
    parser.add_argument("--app-id", type=int, default=4242)
    parser.add_argument("--key-file", type=Path, help="app private key (PEM); made if missing")
    parser.add_argument("--web-url", default="")
    parser.add_argument("--installation", action="append", default=[], help="ID:ACCOUNT:REPO,…")
    parser.add_argument("--repo", action="append", default=[], help="OWNER/NAME=BARE_GIT_DIR")
    options = parser.parse_args()
    key = ""
    if options.key_file is not None:
        exists = options.key_file.exists()
        key = options.key_file.read_text() if exists else generate_app_key(options.key_file)
    fake = FakeGitHub(app_id=options.app_id, private_key=key, path_prefix=options.prefix,
                      web_url=options.web_url, port=options.port)  # fmt: skip
    for mapping in options.repo:
        name, _, git_dir = mapping.partition("=")
        fake.add_repository(name, git_dir=Path(git_dir))
    for spec in options.installation:
        number, account, repos = spec.split(":", 2)
        fake.add_installation(int(number), account, repos.split(","))
    fake.start()
    print(f"fake GitHub REST API at {fake.base_url} (app id {fake.app_id})", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
