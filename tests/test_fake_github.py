"""The fake GitHub REST server against GitHub's published contract, and githubkit against it.

The contract (operations, example bodies, dereferenced schemas) is tests/fixtures/github-rest,
extracted from GitHub's OpenAPI description (see its contract.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from githubkit import AppAuthStrategy, AppInstallationAuthStrategy, GitHub
from githubkit.cache import MemCacheStrategy
from githubkit.exception import RequestFailed

from routined.testing.fake_github import FakeGitHub, generate_app_key
from tests.conftest import git, push_commit

HERE = Path(__file__).resolve().parent
CONTRACT = HERE / "fixtures" / "github-rest"
NO_JWT = "A JSON web token could not be decoded"
FORBIDDEN = "Resource not accessible by integration"
PULL = {"title": "Fix", "head": "claude/fix", "base": "main"}
PULLS = "/repos/acme/widgets/pulls"
# One client for the module's raw requests: a new one each time costs ~35 ms (TLS context).
HTTP = httpx.Client()


def contract(name: str) -> Any:
    path = CONTRACT / name
    if not path.exists():
        pytest.fail(f"GitHub contract file missing: {path}")
    return json.loads(path.read_text())


@pytest.fixture(scope="module", autouse=True)
def close_http() -> Iterator[None]:
    yield
    HTTP.close()


@pytest.fixture(scope="session")
def app_key() -> str:
    return generate_app_key()


@pytest.fixture(scope="session")
def other_key() -> str:
    return generate_app_key()


@pytest.fixture(params=["", "/api/v3"], ids=["github.com", "enterprise-server"])
def fake(request: pytest.FixtureRequest, app_key: str) -> Iterator[FakeGitHub]:
    """Installation 7 on the organization acme: widgets (with a claude/fix branch) and
    gadgets; installation 8 on other: secret."""
    with FakeGitHub(private_key=app_key, path_prefix=request.param) as server:
        server.add_installation(7, "acme", ["widgets", "gadgets"])
        server.set_branch("acme/widgets", "claude/fix")
        server.add_installation(8, "other", ["secret"])
        yield server


@pytest.fixture
def dotcom(app_key: str) -> Iterator[FakeGitHub]:
    """The world of the contract's examples: octocat/Hello-World, web pages on github.com."""
    with FakeGitHub(private_key=app_key, web_url="https://github.com") as server:
        server.add_repository("octocat/Hello-World", branches=["master", "new-feature"],
                              default_branch="master", private=False)  # fmt: skip
        server.add_installation(2, "octocat", ["Hello-World"], account_type="User")
        server.add_installation(1, "github", ["docs"])
        yield server


def app_client(fake: FakeGitHub, key: str | None = None) -> GitHub[AppAuthStrategy]:
    # githubkit's default token cache is process-wide and keyed by app and installation, not
    # by server: each fake gets a cache of its own, or tokens leak from one server to another.
    auth = AppAuthStrategy(fake.app_id, key or fake.private_key)
    return GitHub(auth, base_url=fake.base_url, cache_strategy=MemCacheStrategy(), auto_retry=False)


def installation_client(fake: FakeGitHub, installation_id: int = 7) -> GitHub[Any]:
    app = app_client(fake)
    return app.with_auth(app.auth.as_installation(installation_id))


def app_jwt(fake: FakeGitHub, key: str | None = None, *, iat: int | None = -60,
            exp: int | None = 540, iss: object = "app id") -> str:  # fmt: skip
    """A JWT as an app makes it; `iat` and `exp` in seconds from now, None leaves one out."""
    now = int(time.time())
    claims = {"iat": None if iat is None else now + iat, "exp": None if exp is None else now + exp,
              "iss": str(fake.app_id) if iss == "app id" else iss}  # fmt: skip
    payload = {name: value for name, value in claims.items() if value is not None}
    # PyJWS rather than jwt.encode, which refuses a numeric `iss` (GitHub takes one).
    key = key or fake.private_key
    return jwt.PyJWS().encode(json.dumps(payload).encode(), key, algorithm="RS256")


@dataclass
class As:
    """Raw requests to the fake with one credential (or none), status codes in full view."""

    fake: FakeGitHub
    credential: str | None = None

    def __call__(self, method: str, path: str, body: Any = None, **headers: str) -> httpx.Response:
        if self.credential is not None:
            headers["Authorization"] = f"Bearer {self.credential}"
        return HTTP.request(method, self.fake.base_url + path, json=body, headers=headers)

    def get(self, path: str, **headers: str) -> httpx.Response:
        return self("GET", path, **headers)

    def post(self, path: str, body: Any = None, **headers: str) -> httpx.Response:
        return self("POST", path, body, **headers)

    def patch(self, path: str, body: Any = None) -> httpx.Response:
        return self("PATCH", path, body)


def as_app(fake: FakeGitHub) -> As:
    return As(fake, app_jwt(fake))


def as_installation(fake: FakeGitHub, installation_id: int = 7, **narrowing: Any) -> As:
    if not narrowing:
        return As(fake, fake.mint_token(installation_id))
    minted = as_app(fake).post(f"/app/installations/{installation_id}/access_tokens", narrowing)
    return As(fake, minted.json()["token"])


def violations(value: Any, schema: Mapping[str, Any], where: str = "$") -> list[str]:
    """Where `value` breaks an OpenAPI 3.0 schema (types, nullable, required, enum)."""
    if value is None and schema.get("nullable"):
        return []
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            options = [violations(value, option, where) for option in schema[combinator]]
            return [] if [] in options else min(options, key=len)
    if "allOf" in schema:
        return [v for part in schema["allOf"] for v in violations(value, part, where)]
    kinds: dict[str, type | tuple[type, ...]] = {
        "string": str, "integer": int, "number": (int, float), "boolean": bool,
        "object": dict, "array": list,
    }  # fmt: skip
    kind = schema.get("type")
    if kind is None:
        return []
    numeric = kind in ("integer", "number")
    if not isinstance(value, kinds[kind]) or (numeric and isinstance(value, bool)):
        return [f"{where}: {value!r} is not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} not in {schema['enum']}"]
    found: list[str] = []
    if isinstance(value, dict):
        found += [f"{where}.{name}: missing" for name in schema.get("required", [])
                  if name not in value]  # fmt: skip
        for name, part in schema.get("properties", {}).items():
            if name in value:
                found += violations(value[name], part, f"{where}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += violations(item, schema["items"], f"{where}[{index}]")
    return found


def without(schema: Any, names: set[str]) -> Any:
    """The schema with `names` required nowhere (as when an API version removes them)."""
    if isinstance(schema, dict):
        return {key: [n for n in value if n not in names] if key == "required"
                else without(value, names) for key, value in schema.items()}  # fmt: skip
    return [without(item, names) for item in schema] if isinstance(schema, list) else schema


def missing_keys(example: Any, actual: Any, where: str = "$") -> list[str]:
    """Keys of the example body (recursively) that the actual body lacks. Maps of values are
    data, not shape: an installation's or token's top-level `permissions` (grants) and
    `custom_properties`."""
    if isinstance(example, dict) and isinstance(actual, dict):
        data = {"$.permissions", f"{where}.custom_properties"}
        return [f"{where}.{key}" for key in example if key not in actual] + [
            gap for key in example if key in actual and f"{where}.{key}" not in data
            for gap in missing_keys(example[key], actual[key], f"{where}.{key}")
        ]  # fmt: skip
    if isinstance(example, list) and isinstance(actual, list) and example and actual:
        return missing_keys(example[0], actual[0], f"{where}[0]")
    return []


def url_differences(example: Any, actual: Any, swaps: list[tuple[str, str]], where: str = "$") -> list[str]:  # fmt: skip
    """URL fields whose example value, with `swaps` (regex, replacement) applied, differs
    from the actual one."""
    found: list[str] = []
    if isinstance(example, dict) and isinstance(actual, dict):
        for key, value in example.items():
            # A picture; a mirror the fake has not; a malformed `git:` example; svn.github.com
            # in the example where GitHub serves the web URL.
            if key not in actual or key in ("avatar_url", "mirror_url", "git_url", "svn_url"):
                continue
            if isinstance(value, str) and (key.endswith("url") or key == "href"):
                expected = value
                for pattern, replacement in swaps:
                    expected = re.sub(pattern, replacement, expected)
                if expected != actual[key]:
                    found.append(f"{where}.{key}: {actual[key]!r} != {expected!r}")
            else:
                found += url_differences(value, actual[key], swaps, f"{where}.{key}")
    elif isinstance(example, list) and isinstance(actual, list) and example and actual:
        found += url_differences(example[0], actual[0], swaps, f"{where}[0]")
    return found


def basic_error(response: httpx.Response, status: int) -> str:
    """The message of a `basic-error` answer with this status."""
    body = response.json()
    assert response.status_code == status, (response.status_code, body)
    assert set(body) <= {"message", "documentation_url", "url", "status"}, body
    assert violations(body, contract("contract.json")["shared_schemas"]["basic-error"]) == []
    return str(body["message"])


def validation_error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert response.status_code == 422, body
    assert violations(body, contract("contract.json")["shared_schemas"]["validation-error"]) == []
    return body


def expires_in(body: Mapping[str, Any]) -> float:
    return datetime.fromisoformat(body["expires_at"]).timestamp() - time.time()


# -- githubkit ---------------------------------------------------------------------------


def test_githubkit_app_and_installation_auth_pull_request_and_comments(fake: FakeGitHub) -> None:
    app = app_client(fake)
    found = app.rest.apps.get_repo_installation("acme", "widgets")
    installation = found.parsed_data
    assert (installation.id, installation.app_id) == (7, fake.app_id)
    assert found.raw_response.json()["account"]["login"] == "acme"
    minted = app.rest.apps.create_installation_access_token(installation.id)
    token = minted.parsed_data.token
    assert token.startswith("ghs_") and len(token) != 40  # GitHub: do not assume 40 characters
    assert minted.raw_response.json()["permissions"]["pull_requests"] == "write"

    github = app.with_auth(app.auth.as_installation(installation.id))
    assert fake.pulls() == []
    pull = github.rest.pulls.create("acme", "widgets", title="Fix the widget",
                                    body="Made by a routine.", head="claude/fix", base="main",
                                    ).parsed_data  # fmt: skip
    assert (pull.number, pull.state, pull.draft, pull.merged) == (1, "open", False, False)
    assert pull.html_url == f"{fake.web_origin}/acme/widgets/pull/1"
    assert pull.url == f"{fake.base_url}/repos/acme/widgets/pulls/1"
    assert pull.user is not None and pull.user.login == "routined-test[bot]"
    assert (pull.head.ref, pull.head.label, pull.base.ref) == (
        "claude/fix",
        "acme:claude/fix",
        "main",
    )
    assert pull.head.repo is not None and pull.head.repo.full_name == "acme/widgets"

    issues = github.rest.issues
    comment = issues.create_comment("acme", "widgets", pull.number, body="Done.").parsed_data
    assert comment.html_url == f"{fake.web_origin}/acme/widgets/pull/1#issuecomment-{comment.id}"
    assert comment.user is not None and comment.user.login == "routined-test[bot]"
    edited = issues.update_comment("acme", "widgets", comment.id, body="Done!").parsed_data
    assert (edited.id, edited.body) == (comment.id, "Done!")

    repository = github.rest.repos.get("acme", "widgets").parsed_data
    assert (repository.full_name, repository.default_branch) == ("acme/widgets", "main")
    listed = github.rest.apps.list_repos_accessible_to_installation().parsed_data
    assert sorted(r.full_name for r in listed.repositories) == ["acme/gadgets", "acme/widgets"]

    # What the fake kept, and how githubkit authenticated each call.
    kept = [(p["number"], p["title"], p["body"]) for p in fake.pulls("ACME/Widgets")]
    assert kept == [(1, "Fix the widget", "Made by a routine.")]
    assert [c["body"] for c in fake.comments("acme/widgets")] == ["Done!"]
    schemes = {(r.method, r.path): r.headers["authorization"].split(" ")[0] for r in fake.requests}
    assert schemes[("GET", "/repos/acme/widgets/installation")] == "Bearer"  # the app JWT
    assert schemes[("POST", "/app/installations/7/access_tokens")] == "Bearer"
    assert schemes[("POST", PULLS)] == "token"  # the installation token
    assert all(r.status < 300 for r in fake.requests)


def test_githubkit_mints_again_when_the_fake_says_the_token_expires_soon(app_key: str) -> None:
    with FakeGitHub(private_key=app_key, token_lifetime=30) as fake:
        fake.add_installation(3, "acme", ["widgets"])
        auth = AppInstallationAuthStrategy(fake.app_id, fake.private_key, 3)
        github = GitHub(auth, base_url=fake.base_url, cache_strategy=MemCacheStrategy())
        for _ in range(3):
            github.rest.repos.get("acme", "widgets")
        minted = [r for r in fake.requests if r.path == "/app/installations/3/access_tokens"]
        # githubkit keeps a token until a minute before expires_at: a 30 s token, never.
        assert len(minted) == 3


def test_githubkit_sees_the_refusals(fake: FakeGitHub, other_key: str) -> None:
    # A client must outlive its calls: githubkit's `rest` holds it by a weak reference only.
    impostor, app, github = app_client(fake, other_key), app_client(fake), installation_client(fake)
    with pytest.raises(RequestFailed) as wrong_key:
        impostor.rest.apps.create_installation_access_token(7)
    assert wrong_key.value.response.status_code == 401
    with pytest.raises(RequestFailed) as missing:
        app.rest.apps.get_repo_installation("acme", "nowhere")
    assert missing.value.response.status_code == 404
    with pytest.raises(RequestFailed) as absent_branch:
        github.rest.pulls.create("acme", "widgets", title="t", head="nope", base="main")
    assert absent_branch.value.response.status_code == 422
    errors = absent_branch.value.response.raw_response.json()["errors"]
    assert errors == [{"resource": "PullRequest", "field": "head", "code": "invalid"}]


def test_githubkit_follows_the_link_header_through_every_page(app_key: str) -> None:
    with FakeGitHub(private_key=app_key) as fake:
        fake.add_installation(9, "bulk", [f"repo-{n:03d}" for n in range(150)])
        github = installation_client(fake, 9)
        pages = github.rest.paginate(
            github.rest.apps.list_repos_accessible_to_installation,
            map_func=lambda response: response.parsed_data.repositories,
            per_page=40,
        )
        assert [r.full_name for r in pages] == [f"bulk/repo-{n:03d}" for n in range(150)]
        asked = [r.query for r in fake.requests if r.path == "/installation/repositories"]
        assert [query.get("page", "1") for query in asked] == ["1", "2", "3", "4"]


# -- app JWT -----------------------------------------------------------------------------

EXP = "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires"
IAT = "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"
ISS = "'Issuer' claim ('iss') must be the app's ID or client ID"


@pytest.mark.parametrize(
    ("claims", "refusal"),
    [
        ({}, None),
        ({"iss": "Iv23liFakeRoutined01"}, None),  # the client id, GitHub's recommendation
        ({"iss": 4242}, None),  # the app id as a number
        ({"iat": 0, "exp": 600}, None),  # the 10 minutes GitHub allows, to the second
        ({"exp": -5}, EXP),
        ({"exp": None}, EXP),
        ({"exp": 700}, "'Expiration time' claim ('exp') is too far in the future"),
        ({"iat": 120}, IAT),
        ({"iat": None}, IAT),
        ({"iss": "4243"}, ISS),
        ({"iss": None}, ISS),
    ],
    ids=["app-id", "client-id", "numeric-iss", "exp-at-10-min", "expired", "no-exp",
         "exp-over-10-min", "iat-in-future", "no-iat", "other-app", "no-iss"],
)  # fmt: skip
def test_app_jwt_claims(fake: FakeGitHub, claims: dict[str, Any], refusal: str | None) -> None:
    response = As(fake, app_jwt(fake, **claims)).post("/app/installations/7/access_tokens")
    if refusal is None:
        assert response.status_code == 201, response.json()
    else:
        assert basic_error(response, 401) == refusal
        docs = response.json()["documentation_url"]
        assert docs.endswith("#create-an-installation-access-token-for-an-app")


def sign_hs256(payload: dict[str, Any], secret: bytes) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = part(json.dumps(payload).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{part(mac)}"


def test_app_jwt_must_be_rs256_signed_by_the_app_key(fake: FakeGitHub, other_key: str) -> None:
    now = int(time.time())
    claims = {"iat": now - 60, "exp": now + 540, "iss": str(fake.app_id)}
    public_pem = fake.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    forged = [
        app_jwt(fake, other_key),  # another app's key
        sign_hs256(claims, public_pem),  # the public key used as an HMAC secret
        jwt.encode(claims, "", algorithm="none"),  # unsigned
        app_jwt(fake)[:-4] + "AAAA",  # a damaged signature
        "not-a-jwt",
    ]
    for credential in forged:
        forger = As(fake, credential)
        assert basic_error(forger.post("/app/installations/7/access_tokens"), 401) == NO_JWT
        assert basic_error(forger.get("/repos/acme/widgets/installation"), 401) == NO_JWT
    anonymous = As(fake).get("/repos/acme/widgets/installation")
    assert basic_error(anonymous, 401) == "Requires authentication"


def test_tokens_and_jwts_are_each_refused_where_the_other_belongs(fake: FakeGitHub) -> None:
    app, installation = as_app(fake), as_installation(fake)
    assert app.get("/repos/acme/widgets/installation").status_code == 200
    assert basic_error(installation.get("/repos/acme/widgets/installation"), 401) == NO_JWT
    assert basic_error(installation.post("/app/installations/7/access_tokens"), 401) == NO_JWT
    stranger = As(fake, "ghs_unknown")
    for method, path in [("GET", "/installation/repositories"), ("GET", "/repos/acme/widgets"),
                         ("POST", PULLS), ("PATCH", "/repos/acme/widgets/issues/comments/1")]:  # fmt: skip
        assert installation(method, path, {}).status_code != 401
        assert basic_error(app(method, path, {}), 401) == "Bad credentials"
        assert basic_error(stranger(method, path, {}), 401) == "Bad credentials"
    # Installation tokens go as `token …` (githubkit) or `Bearer …`: both are accepted.
    assert installation.credential is not None
    plain = {"Authorization": f"token {installation.credential}"}
    assert HTTP.get(f"{fake.base_url}/repos/acme/widgets", headers=plain).status_code == 200


# -- installation tokens ----------------------------------------------------------------


def test_installation_tokens_expire_in_an_hour_or_as_configured(fake: FakeGitHub, app_key: str) -> None:  # fmt: skip
    minted = as_app(fake).post("/app/installations/7/access_tokens")
    assert minted.status_code == 201
    body = minted.json()
    assert 3590 < expires_in(body) <= 3600
    schema = contract("schemas/apps-create-installation-access-token.201.schema.json")
    assert violations(body, schema) == []
    assert "repositories" not in body and body["repository_selection"] == "selected"
    holder = As(fake, body["token"])
    fake.advance(3590)
    assert holder.get("/installation/repositories").status_code == 200
    fake.advance(11)
    assert basic_error(holder.get("/installation/repositories"), 401) == "Bad credentials"

    with FakeGitHub(private_key=app_key, token_lifetime=120) as short:
        short.add_installation(1, "acme", ["widgets"])
        body = as_app(short).post("/app/installations/1/access_tokens").json()
        assert 110 < expires_in(body) <= 120


def test_installation_tokens_reach_only_their_repositories_and_permissions(fake: FakeGitHub) -> None:  # fmt: skip
    app = as_app(fake)
    assert basic_error(app.post("/app/installations/99/access_tokens"), 404) == "Not Found"
    outside = app.post("/app/installations/7/access_tokens", {"repositories": ["secret"]})
    assert "not accessible to the parent installation" in validation_error(outside)["message"]
    wider = {"permissions": {"administration": "write"}}
    refused = validation_error(app.post("/app/installations/7/access_tokens", wider))
    assert refused["message"] == "The permissions requested are not granted to this installation."

    narrow = {"repositories": ["gadgets"], "permissions": {"contents": "read"}}
    minted = app.post("/app/installations/7/access_tokens", narrow).json()
    assert [r["full_name"] for r in minted["repositories"]] == ["acme/gadgets"]
    assert minted["permissions"] == {"contents": "read"}
    holder = As(fake, minted["token"])
    assert holder.get("/repos/acme/gadgets").status_code == 200
    assert basic_error(holder.get("/repos/acme/widgets"), 404) == "Not Found"
    pull = holder.post("/repos/acme/gadgets/pulls", {**PULL, "head": "main"})
    assert basic_error(pull, 403) == FORBIDDEN
    listed = holder.get("/installation/repositories").json()
    assert [r["full_name"] for r in listed["repositories"]] == ["acme/gadgets"]

    later = fake.add_repository("acme/later")
    fake.add_installation(7, "acme", ["widgets", "gadgets", "later"])  # access granted later
    everything = as_installation(fake)
    assert everything.get("/repos/acme/later").status_code == 200
    assert basic_error(everything.get("/repos/other/secret"), 404) == "Not Found"
    by_id = app.post("/app/installations/7/access_tokens", {"repository_ids": [later.id]})
    assert [r["full_name"] for r in by_id.json()["repositories"]] == ["acme/later"]


def test_repository_installation_lookup(fake: FakeGitHub) -> None:
    app = as_app(fake)
    found = app.get("/repos/ACME/Widgets/installation")  # names ignore case
    assert found.status_code == 200 and found.json()["id"] == 7
    assert basic_error(app.get("/repos/acme/nowhere/installation"), 404) == "Not Found"


# -- pull requests and comments -----------------------------------------------------------


def invalid(field: str) -> list[dict[str, str]]:
    return [{"resource": "PullRequest", "field": field, "code": "invalid"}]


def custom(message: str) -> list[dict[str, str]]:
    return [{"resource": "PullRequest", "code": "custom", "message": message}]


@pytest.mark.parametrize(
    ("change", "message", "errors"),
    [
        ({"head": None}, 'Invalid request.\n\n"head" wasn\'t supplied.', None),
        ({"head": None, "base": None}, 'Invalid request.\n\n"base", "head" weren\'t supplied.', None),
        ({"title": None}, 'Invalid request.\n\n"title" wasn\'t supplied.', None),
        ({"title": 5}, "Invalid request.\n\nFor 'properties/title', 5 is not a string.", None),
        ({"draft": "yes"}, "Invalid request.\n\nFor 'properties/draft', \"yes\" is not a boolean.", None),
        ({"head": "claude/absent"}, "Validation Failed", invalid("head")),
        ({"head": "someone:claude/fix"}, "Validation Failed", invalid("head")),
        ({"head_repo": "someone/widgets"}, "Validation Failed", invalid("head_repo")),
        ({"base": "develop"}, "Validation Failed", invalid("base")),
        ({"head": "main"}, "Validation Failed", custom("No commits between main and main")),
    ],
    ids=["no-head", "no-head-no-base", "no-title", "title-not-string", "draft-not-boolean",
         "head-absent", "head-in-unknown-fork", "head-repo-elsewhere", "base-absent", "no-commits"],
)  # fmt: skip
def test_pull_request_validation(fake: FakeGitHub, change: dict[str, Any], message: str, errors: list[dict[str, str]] | None) -> None:  # fmt: skip
    body = {k: v for k, v in {**PULL, **change}.items() if v is not None}
    refused = validation_error(as_installation(fake).post(PULLS, body))
    assert (refused["message"], refused.get("errors")) == (message, errors)
    docs = "https://docs.github.com/rest/pulls/pulls#create-a-pull-request"
    assert refused["documentation_url"] == docs
    assert fake.pulls() == []


def test_a_second_pull_request_on_the_same_head_and_base_is_refused(fake: FakeGitHub) -> None:
    installation = as_installation(fake)
    first = installation.post(PULLS, {**PULL, "head": "acme:claude/fix"})
    assert first.status_code == 201
    assert first.headers["location"] == first.json()["url"]
    again = validation_error(installation.post(PULLS, PULL))
    assert again["errors"] == custom("A pull request already exists for acme:claude/fix.")
    fake.set_branch("acme/widgets", "release")
    assert installation.post(PULLS, {**PULL, "base": "release"}).status_code == 201
    assert [p["number"] for p in fake.pulls()] == [1, 2]


def test_pull_requests_read_branches_from_a_bare_git_repository(app_key: str, origin: Path, tmp_path: Path) -> None:  # fmt: skip
    with FakeGitHub(private_key=app_key) as fake:
        fake.add_repository("acme/app", git_dir=origin)
        fake.add_installation(5, "acme", ["acme/app"])
        installation, pulls = as_installation(fake, 5), "/repos/acme/app/pulls"
        early = installation.post(pulls, {**PULL, "head": "claude/x"})
        assert validation_error(early)["errors"] == invalid("head")  # not pushed yet
        sha = push_commit(origin, tmp_path / "clone", "fix.txt", "fixed\n", branch="claude/x")
        made = installation.post(pulls, {**PULL, "head": "claude/x"}).json()
        assert (made["head"]["sha"], made["commits"]) == (sha, 1)
        assert made["base"]["sha"] == git("rev-parse", "main", cwd=origin)
        assert made["base"]["repo"]["default_branch"] == "main"
        git("branch", "claude/same", "main", cwd=origin)
        same = installation.post(pulls, {**PULL, "head": "claude/same"})
        assert validation_error(same)["errors"] == custom("No commits between main and claude/same")


def test_comments_on_issues_and_pull_requests(fake: FakeGitHub) -> None:
    installation = as_installation(fake)
    absent = installation.post("/repos/acme/widgets/issues/1/comments", {"body": "x"})
    assert basic_error(absent, 404) == "Not Found"
    issue = fake.add_issue("acme/widgets", "The widget is broken")
    comments = f"/repos/acme/widgets/issues/{issue}/comments"
    made = installation.post(comments, {"body": "On it."})
    assert made.status_code == 201
    comment = made.json()
    page = f"{fake.web_origin}/acme/widgets/issues/{issue}#issuecomment-{comment['id']}"
    assert comment["html_url"] == page
    url = f"{fake.base_url}/repos/acme/widgets/issues/comments/{comment['id']}"
    assert made.headers["location"] == comment["url"] == url
    missing = validation_error(installation.post(comments, {}))
    assert missing["message"] == 'Invalid request.\n\n"body" wasn\'t supplied.'
    headers = {"Authorization": f"Bearer {installation.credential}"}
    garbled = HTTP.post(fake.base_url + comments, content=b"{not json", headers=headers)
    assert basic_error(garbled, 400) == "Problems parsing JSON"

    edit = f"/repos/acme/widgets/issues/comments/{comment['id']}"
    assert basic_error(installation.patch("/repos/acme/widgets/issues/comments/999999", {"body": "y"}), 404)  # fmt: skip
    assert basic_error(installation.patch(edit.replace("widgets", "gadgets"), {"body": "y"}), 404)
    assert validation_error(installation.patch(edit, {"body": None}))["message"].startswith(
        "Invalid"
    )
    assert installation.patch(edit, {"body": "Fixed."}).json()["body"] == "Fixed."
    read_only = as_installation(fake, permissions={"issues": "read"})
    assert basic_error(read_only.post(comments, {"body": "z"}), 403) == FORBIDDEN
    assert [c["body"] for c in fake.comments()] == ["Fixed."]


# -- bodies against the contract ----------------------------------------------------------


def test_bodies_have_every_required_field_and_the_examples_shape(dotcom: FakeGitHub) -> None:
    """Each operation's success body, made from the contract's example request where there
    is one: valid against its schema, no key of the example body missing, and the example's
    URLs reproduced for the example's own values."""
    fake, app, installation = dotcom, as_app(dotcom), as_installation(dotcom, 2)
    token_request = contract("examples/apps-create-installation-access-token.request.json")
    token = app.post("/app/installations/2/access_tokens", token_request).json()
    pull_request = contract("examples/pulls-create.request.json")
    pull = installation.post("/repos/octocat/Hello-World/pulls", pull_request).json()
    issue = fake.add_issue("octocat/Hello-World", "Found a bug")
    comment_request = contract("examples/issues-create-comment.request.json")
    comments = f"/repos/octocat/Hello-World/issues/{issue}/comments"
    comment = installation.post(comments, comment_request).json()
    edit = f"/repos/octocat/Hello-World/issues/comments/{comment['id']}"
    edited = installation.patch(edit, contract("examples/issues-update-comment.request.json"))

    api = [(re.escape("https://api.github.com"), fake.base_url)]
    on_issue = [*api, (r"\b1347\b", str(issue)), (r"comments/1\b", f"comments/{comment['id']}"),
                (r"issuecomment-1\b", f"issuecomment-{comment['id']}")]  # fmt: skip
    on_pull = [*api, (r"\b1347\b", str(pull["number"])),
               ("6dcb09b5b57875f334f61aebed695e2e4193db5e", pull["head"]["sha"])]  # fmt: skip
    cases = [
        ("apps-get-repo-installation.200", app.get("/repos/github/docs/installation").json(), api),
        ("apps-create-installation-access-token.201", token, api),
        ("apps-list-repos-accessible-to-installation.200", installation.get("/installation/repositories").json(), api),
        ("repos-get.200", installation.get("/repos/octocat/Hello-World").json(), api),
        ("pulls-create.201", pull, on_pull),
        ("issues-create-comment.201", comment, on_issue),
        ("issues-update-comment.200", edited.json(), on_issue),
    ]  # fmt: skip
    for name, body, swaps in cases:
        assert violations(body, contract(f"schemas/{name}.schema.json")) == [], name
        example = contract(f"examples/{name}.json")
        if name == "repos-get.200":  # fields of forks, and of organizations' repositories
            example = {k: v for k, v in example.items() if k not in ("parent", "source", "organization")}  # fmt: skip
        assert missing_keys(example, body) == [], name
        if name.startswith(("pulls", "issues")):  # written by the app's bot, not by octocat
            bot = [(r"users/octocat", "users/routined-test%5Bbot%5D"),
                   (r"github\.com/octocat$", "github.com/apps/routined-test")]  # fmt: skip
            assert url_differences(example.pop("user"), body["user"], [*swaps, *bot]) == []
        assert url_differences(example, body, swaps) == [], name
    assert (pull["title"], pull["body"], pull["head"]["ref"], pull["base"]["ref"]) == (
        "Amazing new feature", "Please pull these awesome changes in!", "new-feature", "master")  # fmt: skip
    assert pull["user"]["login"] == "routined-test[bot]" and pull["user"]["type"] == "Bot"
    assert token["permissions"] == {"issues": "write", "contents": "read"}
    assert [r["full_name"] for r in token["repositories"]] == ["octocat/Hello-World"]
    assert comment["body"] == "Me too"


def test_api_version_2026_03_10_drops_the_fields_it_removed(fake: FakeGitHub) -> None:
    installation = as_installation(fake)
    new = installation.post(PULLS, PULL, **{"X-GitHub-Api-Version": "2026-03-10"})
    assert new.headers["x-github-api-version-selected"] == "2026-03-10"
    body = new.json()
    assert "merge_commit_sha" not in body and "assignee" not in body
    assert "has_downloads" not in body["head"]["repo"]
    schema = contract("schemas/pulls-create.201.schema.json")
    assert violations(body, schema) != []  # the 2022-11-28 schema still requires them
    assert violations(body, without(schema, {"merge_commit_sha", "assignee", "has_downloads"})) == []  # fmt: skip
    old = installation.get("/repos/acme/widgets", **{"X-GitHub-Api-Version": "2022-11-28"})
    assert old.json()["has_downloads"] is True
    assert "merge_commit_sha" in fake.pulls()[0]  # kept whole; only the answer drops it
    unknown = installation.get("/repos/acme/widgets", **{"X-GitHub-Api-Version": "2099-01-01"})
    assert basic_error(unknown, 400) == "API version 2099-01-01 is not supported."


def test_pages_and_link_header(app_key: str) -> None:
    with FakeGitHub(private_key=app_key) as fake:
        fake.add_installation(9, "bulk", [f"repo-{n:03d}" for n in range(150)])
        installation = as_installation(fake, 9)
        url = f"{fake.base_url}/installation/repositories"
        first = installation.get("/installation/repositories")
        assert (len(first.json()["repositories"]), first.json()["total_count"]) == (30, 150)
        assert first.headers["link"] == f'<{url}?page=2>; rel="next", <{url}?page=5>; rel="last"'
        middle = installation.get("/installation/repositories?per_page=40&page=2")
        assert middle.headers["link"] == (
            f'<{url}?per_page=40&page=1>; rel="prev", <{url}?per_page=40&page=3>; rel="next", '
            f'<{url}?per_page=40&page=4>; rel="last", <{url}?per_page=40&page=1>; rel="first"'
        )
        capped = installation.get("/installation/repositories?per_page=500")
        assert len(capped.json()["repositories"]) == 100  # per_page is at most 100
        last = installation.get("/installation/repositories?per_page=100&page=2")
        assert len(last.json()["repositories"]) == 50 and 'rel="next"' not in last.headers["link"]
        seen: list[str] = []
        following: str | None = f"{url}?per_page=70"
        while following:
            page = HTTP.get(
                following, headers={"Authorization": f"token {installation.credential}"}
            )
            seen += [r["full_name"] for r in page.json()["repositories"]]
            found = re.search(r'<([^>]+)>; rel="next"', page.headers.get("link", ""))
            following = found.group(1) if found else None
        assert seen == [f"bulk/repo-{n:03d}" for n in range(150)]


def test_conditional_get_answers_304(fake: FakeGitHub) -> None:
    installation = as_installation(fake)
    first = installation.get("/installation/repositories")
    again = installation.get(
        "/installation/repositories", **{"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""


def test_enterprise_server_prefix_and_unknown_paths(app_key: str) -> None:
    with FakeGitHub(private_key=app_key, path_prefix="/api/v3") as fake:
        fake.add_installation(7, "acme", ["widgets"])
        app = as_app(fake)
        assert fake.base_url.endswith("/api/v3")
        root = fake.base_url.removesuffix("/api/v3")
        headers = {"Authorization": f"Bearer {app.credential}"}
        outside = HTTP.get(f"{root}/repos/acme/widgets/installation", headers=headers)
        assert basic_error(outside, 404) == "Not Found"
        body = app.get("/repos/acme/widgets/installation").json()
        assert body["access_tokens_url"] == f"{fake.base_url}/app/installations/7/access_tokens"
        assert body["account"]["url"] == f"{fake.base_url}/orgs/acme"
        assert basic_error(app("DELETE", "/repos/acme/widgets"), 404) == "Not Found"


def test_scripted_failures_and_recorded_requests(fake: FakeGitHub) -> None:
    installation = as_installation(fake)
    fake.fail("POST", r"/repos/[^/]+/[^/]+/pulls", 502, "Server Error")
    assert basic_error(installation.post(PULLS, PULL), 502) == "Server Error"
    assert installation.post(PULLS, PULL).status_code == 201
    assert [(r.method, r.path, r.status, r.body) for r in fake.requests] == [
        ("POST", PULLS, 502, PULL),
        ("POST", PULLS, 201, PULL),
    ]
    assert fake.requests[0].headers["authorization"] == f"Bearer {installation.credential}"


# -- keys and running by hand -------------------------------------------------------------


def test_generated_app_key_file_is_private_and_what_github_hands_out(tmp_path: Path) -> None:
    path = tmp_path / "app.pem"
    pem = generate_app_key(path)
    assert path.read_text() == pem and pem.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with FakeGitHub(private_key=path.read_text()) as fake:
        fake.add_installation(1, "acme", ["widgets"])
        app = app_client(fake)
        assert app.rest.apps.get_repo_installation("acme", "widgets").parsed_data.id == 1


def test_runs_by_hand(tmp_path: Path) -> None:
    key_file = tmp_path / "app.pem"
    server = subprocess.Popen(
        [sys.executable, "-m", "routined.testing.fake_github", "--port", "0", "--prefix", "/api/v3",
         "--key-file", str(key_file), "--installation", "7:acme:widgets,gadgets"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # printed once the server listens
        found = re.search(r"(http://\S+)", line)
        assert found is not None, line
        now = int(time.time())
        claims = {"iat": now - 60, "exp": now + 540, "iss": "4242"}
        credential = jwt.encode(claims, key_file.read_text(), algorithm="RS256")
        headers = {"Authorization": f"Bearer {credential}"}
        minted = HTTP.post(f"{found.group(1)}/app/installations/7/access_tokens", headers=headers)
        assert minted.status_code == 201
        headers = {"Authorization": f"token {minted.json()['token']}"}
        listed = HTTP.get(f"{found.group(1)}/installation/repositories", headers=headers)
        assert listed.json()["total_count"] == 2
    finally:
        server.terminate()
        server.wait(timeout=10)
