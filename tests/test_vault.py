"""Secrets at rest (`routined.secrets.vault`): the key, encryption, lookups, names, redaction.

The store tests run on SQLite and PostgreSQL; the key file is a real file in a real
home, made by racing processes in one test.
"""

from __future__ import annotations

import json
import multiprocessing
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlalchemy.orm import Session

from routined import variables
from routined.config import Settings
from routined.db import Store
from routined.models import DEFAULT_ACCOUNT_ID, Account, Secret
from routined.secrets import vault
from routined.secrets.redaction import Redactor
from routined.secrets.vault import VaultError
from tests.conftest import T0

ACME = "acct_acme"


def settings_of(home: Path, **env: str) -> Settings:
    return Settings.from_env({"ROUTINED_HOME": str(home), **env})


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def session(store: Store) -> Iterator[Session]:
    """One transaction on a store with a second account, `acme`."""
    with store.transaction() as opened:
        opened.add(Account(id=ACME, name="acme", plan="unlimited", created_at=T0))
        opened.flush()
        yield opened


def test_a_secret_is_stored_encrypted_and_revealed(session: Session, home: Path) -> None:
    settings = settings_of(home)
    created = vault.set_secret(
        session,
        settings,
        account_id=DEFAULT_ACCOUNT_ID,
        name="NPM_TOKEN",
        value="npm-abc123",
        now=T0,
    )
    assert created is True
    stored = session.scalars(select(Secret)).one()
    assert "npm-abc123" not in stored.ciphertext
    key = (home / "secret.key").read_bytes().strip()
    assert Fernet(key).decrypt(stored.ciphertext).decode() == "npm-abc123"
    assert vault.reveal(session, settings, account_id=DEFAULT_ACCOUNT_ID, names=["NPM_TOKEN"]) == {
        "NPM_TOKEN": "npm-abc123"
    }


def test_setting_again_replaces_the_value_and_keeps_when_it_was_made(
    session: Session, home: Path
) -> None:
    settings = settings_of(home)
    later = T0 + timedelta(hours=1)
    vault.set_secret(
        session, settings, account_id=DEFAULT_ACCOUNT_ID, name="A_KEY", value="first", now=T0
    )
    replaced = vault.set_secret(
        session, settings, account_id=DEFAULT_ACCOUNT_ID, name="A_KEY", value="second", now=later
    )
    assert replaced is False
    [secret] = vault.list_secrets(session, account_id=DEFAULT_ACCOUNT_ID)
    assert (secret.name, secret.created_at, secret.updated_at) == ("A_KEY", T0, later)
    assert vault.reveal(session, settings, account_id=DEFAULT_ACCOUNT_ID, names=["A_KEY"]) == {
        "A_KEY": "second"
    }


def test_accounts_keep_their_own_secrets_under_one_name(session: Session, home: Path) -> None:
    settings = settings_of(home)
    vault.set_secret(
        session, settings, account_id=DEFAULT_ACCOUNT_ID, name="TOKEN", value="ours-1234", now=T0
    )
    vault.set_secret(session, settings, account_id=ACME, name="TOKEN", value="theirs-5678", now=T0)
    vault.set_secret(session, settings, account_id=ACME, name="B_TOKEN", value="theirs-b", now=T0)
    assert [s.name for s in vault.list_secrets(session, account_id=ACME)] == ["B_TOKEN", "TOKEN"]
    assert vault.reveal(session, settings, account_id=ACME, names=["TOKEN"]) == {
        "TOKEN": "theirs-5678"
    }
    assert vault.delete_secret(session, account_id=ACME, name="TOKEN") is True
    assert vault.delete_secret(session, account_id=ACME, name="TOKEN") is False
    assert [s.name for s in vault.list_secrets(session, account_id=ACME)] == ["B_TOKEN"]
    assert vault.reveal(session, settings, account_id=DEFAULT_ACCOUNT_ID, names=["TOKEN"]) == {
        "TOKEN": "ours-1234"
    }


def test_a_missing_secret_is_named_with_the_command_that_sets_it(
    session: Session, home: Path
) -> None:
    settings = settings_of(home)
    vault.set_secret(session, settings, account_id=ACME, name="HAVE_IT", value="present", now=T0)
    with pytest.raises(VaultError) as raised:
        vault.reveal(
            session, settings, account_id=ACME, names=["NPM_TOKEN", "HAVE_IT", "PYPI_TOKEN"]
        )
    message = str(raised.value)
    assert "no secret NPM_TOKEN, PYPI_TOKEN stored" in message
    # Each missing secret's own command, not a placeholder to fill in (issue 16).
    assert (
        "store each with `routined secret set NPM_TOKEN --account acme`, "
        "`routined secret set PYPI_TOKEN --account acme` (the value on stdin)"
    ) in message
    assert "NAME" not in message
    with pytest.raises(
        VaultError, match=r"store it with `routined secret set HAVE_IT` \(the value on stdin\)"
    ):
        vault.reveal(session, settings, account_id=DEFAULT_ACCOUNT_ID, names=["HAVE_IT"])


def test_nothing_asked_needs_no_key(session: Session, home: Path) -> None:
    assert vault.reveal(session, settings_of(home), account_id=ACME, names=[]) == {}
    assert not (home / "secret.key").exists()


def test_a_configured_key_is_used_and_no_file_is_made(session: Session, home: Path) -> None:
    key = Fernet.generate_key().decode()
    settings = settings_of(home, ROUTINED_SECRET_KEY=key)
    vault.set_secret(
        session, settings, account_id=ACME, name="DEPLOY_KEY", value="ssh-rsa-xyz", now=T0
    )
    assert not (home / "secret.key").exists()
    stored = session.scalars(select(Secret.ciphertext)).one()
    assert Fernet(key).decrypt(stored) == b"ssh-rsa-xyz"


def test_a_key_file_named_by_the_file_variable_is_used(
    session: Session, home: Path, tmp_path: Path
) -> None:
    key = Fernet.generate_key()
    (tmp_path / "key").write_bytes(key + b"\n")
    settings = settings_of(home, ROUTINED_SECRET_KEY_FILE=str(tmp_path / "key"))
    vault.set_secret(
        session, settings, account_id=ACME, name="DEPLOY_KEY", value="ssh-rsa-xyz", now=T0
    )
    assert Fernet(key).decrypt(session.scalars(select(Secret.ciphertext)).one()) == b"ssh-rsa-xyz"


@pytest.mark.parametrize(
    "bad",
    ["not-a-key", "c2hvcnQ=", Fernet.generate_key().decode()[:-2]],
    ids=["not base64", "too short", "cut"],
)
def test_a_bad_configured_key_is_named(session: Session, home: Path, bad: str) -> None:
    settings = settings_of(home, ROUTINED_SECRET_KEY=bad)
    with pytest.raises(
        VaultError, match=r"^ROUTINED_SECRET_KEY: not a Fernet key .*`routined secret key`"
    ):
        vault.set_secret(session, settings, account_id=ACME, name="A_KEY", value="value", now=T0)
    assert session.scalars(select(Secret)).all() == []


def test_the_key_file_is_made_at_the_first_write_readable_by_the_owner_only(
    session: Session, home: Path
) -> None:
    settings = settings_of(home)
    # A secret stored under a key that is gone: reading it must not make a new key.
    session.add(
        Secret(account_id=ACME, name="OLD", ciphertext="gAAAA", created_at=T0, updated_at=T0)
    )
    with pytest.raises(
        VaultError, match=r"no key to decrypt secrets with: .*secret\.key does not exist"
    ):
        vault.reveal(session, settings, account_id=ACME, names=["OLD"])
    assert not home.exists()
    vault.set_secret(session, settings, account_id=ACME, name="NEW", value="fresh-value", now=T0)
    key_file = home / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    Fernet(key_file.read_bytes().strip())  # a valid key
    assert [p.name for p in home.iterdir()] == ["secret.key"]  # no draft left behind


def test_a_value_under_another_key_says_the_key_changed(session: Session, home: Path) -> None:
    before = settings_of(home, ROUTINED_SECRET_KEY=Fernet.generate_key().decode())
    vault.set_secret(session, before, account_id=ACME, name="NPM_TOKEN", value="npm-abc123", now=T0)
    after = settings_of(home, ROUTINED_SECRET_KEY=Fernet.generate_key().decode())
    with pytest.raises(VaultError) as raised:
        vault.reveal(session, after, account_id=ACME, names=["NPM_TOKEN"])
    assert "secret NPM_TOKEN cannot be decrypted: the key changed" in str(raised.value)
    assert "ROUTINED_SECRET_KEY" in str(raised.value)
    assert "`routined secret set NPM_TOKEN --account acme`" in str(raised.value)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "value: empty"),
        ("a\x00b", "value: contains a NUL character"),
        ("x" * (vault.MAX_VALUE + 1), "value: 65537 characters is over the limit of 65536"),
    ],
)
def test_values_an_environment_cannot_hold_are_refused(
    session: Session, home: Path, value: str, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        vault.set_secret(
            session, settings_of(home), account_id=ACME, name="A_KEY", value=value, now=T0
        )
    assert not home.exists()  # refused before a key was made


def _race(url: str, home: str, name: str, barrier: Any) -> None:
    store = Store(url)
    try:
        barrier.wait(timeout=60)
        with store.transaction() as session:
            vault.set_secret(
                session, settings_of(Path(home)), account_id=DEFAULT_ACCOUNT_ID,
                name=name, value=f"value of {name}", now=T0,
            )  # fmt: skip
    finally:
        store.dispose()


def test_processes_making_the_key_at_once_agree_on_one(tmp_path: Path, home: Path) -> None:
    """Each process stores a secret in a store of its own at the same moment; every one
    is readable afterwards with the one key file, so none wrote over another's key."""
    names = [f"SECRET_{number}" for number in range(4)]
    urls = []
    for name in names:
        url = f"sqlite:///{tmp_path / name}.db"
        Store(url).migrate()
        urls.append(url)
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(len(names))
    processes = [
        spawn.Process(target=_race, args=(url, str(home), name, barrier))
        for url, name in zip(urls, names, strict=True)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    settings = settings_of(home)
    for url, name in zip(urls, names, strict=True):
        store = Store(url)
        with store.transaction() as session:
            assert vault.reveal(session, settings, account_id=DEFAULT_ACCOUNT_ID, names=[name]) == {
                name: f"value of {name}"
            }
        store.dispose()
    assert sorted(p.name for p in home.iterdir()) == ["secret.key"]


def test_a_key_made_meanwhile_by_another_process_is_kept(home: Path) -> None:
    home.mkdir()
    theirs = Fernet.generate_key() + b"\n"
    (home / "secret.key").write_bytes(theirs)
    # What a process does that found no key an instant before another made one.
    vault._create_key_file(home / "secret.key")
    assert (home / "secret.key").read_bytes() == theirs
    assert [p.name for p in home.iterdir()] == ["secret.key"]


@pytest.mark.parametrize(
    "name", ["NPM_TOKEN", "_private", "a", "A" * 100, "GITHUB_TOKEN", "anthropic_key", "PATHS"]
)
def test_variable_names_that_are_allowed(name: str) -> None:
    variables.check_variable_name(name)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("1PASSWORD", "is not a variable name"),
        ("NPM-TOKEN", "is not a variable name"),
        ("", "is not a variable name"),
        ("A" * 101, "at most 100 characters"),
        ("A\n", "is not a variable name"),
        ("PATH", "is set by the sandbox itself"),
        ("LD_PRELOAD", "is set by the sandbox itself"),
        ("https_proxy", "is set by the sandbox itself"),
        ("NO_PROXY", "is set by the sandbox itself"),
        ("IS_SANDBOX", "is set by the sandbox itself"),
        ("ANTHROPIC_API_KEY", "names starting with ANTHROPIC_, CLAUDE_, ROUTINED_"),
        ("ANTHROPIC_BASE_URL", "are Claude Code's and routined's own"),
        ("CLAUDE_CODE_OAUTH_TOKEN", "are Claude Code's and routined's own"),
        ("ROUTINED_PROMPT_FILE", "are Claude Code's and routined's own"),
    ],
)
def test_variable_names_that_are_refused(name: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        variables.check_variable_name(name)


def test_reserved_names_are_the_sandboxs_own() -> None:
    assert {"PATH", "HOME", "TMPDIR", "LANG", "TERM", "SHELL", "USER", "IS_SANDBOX",
            "LD_PRELOAD", "LD_LIBRARY_PATH", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
            "https_proxy", "NO_PROXY", "no_proxy"} == variables.RESERVED  # fmt: skip
    for name in variables.RESERVED:
        with pytest.raises(ValueError):
            variables.check_variable_name(name)


# Redaction


def test_every_occurrence_is_replaced_by_the_secrets_name() -> None:
    redactor = Redactor({"NPM_TOKEN": "npm_abc123", "DB_PASSWORD": "hunter22"})
    assert redactor.text("npm_abc123 then hunter22, again npm_abc123.") == (
        "[redacted:NPM_TOKEN] then [redacted:DB_PASSWORD], again [redacted:NPM_TOKEN]."
    )


def test_a_value_inside_a_longer_one_leaves_no_part_of_the_longer() -> None:
    redactor = Redactor({"SHORT": "abcd", "LONG": "xxabcdyy"})
    assert redactor.text("xxabcdyy and abcd") == "[redacted:LONG] and [redacted:SHORT]"


def test_a_value_that_is_a_word_of_the_mark_does_not_eat_into_marks() -> None:
    redactor = Redactor({"A_KEY": "s3cr3t-value", "WORD": "redacted"})
    assert redactor.text("s3cr3t-value redacted") == "[redacted:A_KEY] [redacted:WORD]"


def test_values_shorter_than_four_characters_are_left_alone() -> None:
    redactor = Redactor({"DEBUG": "1", "ENV": "dev", "TOKEN": "tok4"})
    assert redactor.text("dev build 1 with tok4") == "dev build 1 with [redacted:TOKEN]"
    assert not Redactor({"DEBUG": "1", "ENV": "dev"})
    assert not Redactor({})
    assert Redactor({"TOKEN": "tok4"})


def test_one_value_under_two_names_is_marked_with_one_of_them() -> None:
    redactor = Redactor({"B_TOKEN": "same-value", "A_TOKEN": "same-value"})
    assert redactor.text("same-value") == "[redacted:A_TOKEN]"


def test_text_without_a_secret_comes_back_as_it_was() -> None:
    text = "an ordinary line of agent output " * 50
    assert Redactor({"TOKEN": "npm_abc123"}).text(text) is text
    assert Redactor({"TOKEN": "npm_abc123"}).text("") == ""


def test_values_with_pattern_characters_are_matched_literally() -> None:
    redactor = Redactor({"PASSWORD": "p@ss.w*rd(1)"})
    assert redactor.text("p@ss.w*rd(1) pXss.wwrd(1)") == "[redacted:PASSWORD] pXss.wwrd(1)"


def test_multi_line_values_are_replaced_whole() -> None:
    pem = "-----BEGIN KEY-----\nMIIB\n-----END KEY-----"
    assert Redactor({"DEPLOY_KEY": pem}).text(f"cat:\n{pem}\n") == "cat:\n[redacted:DEPLOY_KEY]\n"


def test_a_multi_line_value_cut_into_lines_or_escaped_is_redacted_line_by_line() -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\nAAAABG5vbmUAAAAE\n-----END"
    redactor = Redactor({"DEPLOY_KEY": key, "QUOTED": 'pa"ss\\word'})
    printed = redactor.data({"lines": ["+ cat deploy_key", *key.splitlines()]})
    assert printed == {"lines": ["+ cat deploy_key", *["[redacted:DEPLOY_KEY]"] * 4]}
    preview = json.dumps({"said": f'{key} and pa"ss\\\\word'})[:80]
    assert "b3Bl" not in redactor.text(preview) and "BEGIN" not in redactor.text(preview)
    assert redactor.text(json.dumps('pa"ss\\word')) == '"[redacted:QUOTED]"'


def test_json_like_data_is_redacted_in_keys_values_and_lists() -> None:
    redactor = Redactor({"TOKEN": "npm_abc123"})
    event: dict[str, Any] = {
        "type": "tool_result",
        "content": [{"text": "token=npm_abc123"}, "npm_abc123", 3, None, True],
        "npm_abc123": {"nested": ("npm_abc123", 1.5)},
        "seq": 4,
    }
    assert redactor.data(event) == {
        "type": "tool_result",
        "content": [{"text": "token=[redacted:TOKEN]"}, "[redacted:TOKEN]", 3, None, True],
        "[redacted:TOKEN]": {"nested": ["[redacted:TOKEN]", 1.5]},
        "seq": 4,
    }
    assert event["content"][1] == "npm_abc123"  # the original is not changed
    assert redactor.data("npm_abc123") == "[redacted:TOKEN]"
    assert redactor.data(7) == 7


# A piece of a value that a cut left: its start before the end of what was kept, its
# end after the start. Claude Code's previews cut at any character; so do routined's
# own bounds (an event's preview, a summary's last 4,000 characters).

TOKEN = "ghp_Q7rT2xLm9VbN4cYw8ZkP3dFs6HjA1uGe5Rt0"


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("token=ghp_Q7rT2x", "token=[redacted:TOKEN]"),  # the end of the text
        ("ghp_Q", "[redacted:TOKEN]"),  # four letters and digits: g, h, p, Q
        ("ghp_Q7rT2x\nnext line", "[redacted:TOKEN]\nnext line"),
        ("ghp_Q7rT2x\r\nnext line", "[redacted:TOKEN]\r\nnext line"),
        # Claude Code's 2 KB preview, as its transcript (JSON) writes it.
        (
            r'{"content": "Preview (first 2KB):\nx ghp_Q7rT2x\n...\n</persisted-output>"}',
            r'{"content": "Preview (first 2KB):\nx [redacted:TOKEN]\n...\n</persisted-output>"}',
        ),
        ("ghp_Q7rT2x…", "[redacted:TOKEN]…"),
        ("ghp_Q7rT2x...[truncated]", "[redacted:TOKEN]...[truncated]"),
        (r"ghp_Q7rT2x\u2026", r"[redacted:TOKEN]\u2026"),
        ("ghp_Q7rT2x\ufffd", "[redacted:TOKEN]\ufffd"),  # bytes cut inside a character
        ('{"stdout": "ghp_Q7rT2x"}', '{"stdout": "[redacted:TOKEN]"}'),
        # The end of a value where a cut kept the end of a text.
        ("uGe5Rt0 and then", "[redacted:TOKEN] and then"),
        (
            "head\n\n... [4017 characters truncated] ...\n\nA1uGe5Rt0\nrest",
            "head\n\n... [4017 characters truncated] ...\n\n[redacted:TOKEN]\nrest",
        ),
        ("[… 40KB omitted …]\nuGe5Rt0 tail", "[… 40KB omitted …]\n[redacted:TOKEN] tail"),
        ("…e5Rt0 and", "…[redacted:TOKEN] and"),
        ('{"said": "Ge5Rt0 was"}', '{"said": "[redacted:TOKEN] was"}'),
        # A cut that kept both ends of a line wrapped inside the value.
        ("ghp_Q7rT2xLm9\nVbN4cYw8ZkP3dFs6HjA1uGe5Rt0", "[redacted:TOKEN]\n[redacted:TOKEN]"),
    ],
)
def test_a_piece_of_a_value_left_by_a_cut_is_redacted(text: str, redacted: str) -> None:
    assert Redactor({"TOKEN": TOKEN}).text(text) == redacted


@pytest.mark.parametrize(
    "text",
    [
        "ghp_Q7rT2xZZZ",  # the start of the value, then other text: not a cut
        "ghp_Q7rT2x and more",
        "ghp_Q7rT2x-other",
        "ghp_\n",  # three letters and digits are not enough
        "ghp\n",
        "ghp_Zz9Q7rT2xLm\n",  # another token with the same prefix
        "xyzuGe5Rt0 and",  # the end of the value after other text
        "see e5Rt0",
        "\nRt0 and",  # three letters and digits
        r'{"stdout": "ghp_Q7rT2x\"more"}',  # an escaped quote: the string goes on
        r"ghp_Q7rT2x\\n",  # an escaped backslash, then n: not a line break
    ],
)
def test_a_piece_not_left_by_a_cut_is_ordinary_text(text: str) -> None:
    assert Redactor({"TOKEN": TOKEN}).text(text) == text


def test_separators_and_indentation_are_not_the_start_of_a_key() -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5v\n-----END"
    redactor = Redactor({"DEPLOY_KEY": key})
    text = "table\n-----\n=====\n----------\n    \n-----BEG\n"
    assert redactor.text(text) == text
    assert redactor.text("x -----BEGIN OPE\n") == "x [redacted:DEPLOY_KEY]\n"


def test_a_vendor_prefix_shared_with_other_keys_is_left_alone_before_another_key() -> None:
    redactor = Redactor({"ANTHROPIC": "sk-ant-api03-Qx7Lm2Zr9TbN4cYw8Zk"})
    text = "export KEY=sk-ant-api03-Other9Key5Value\n"
    assert redactor.text(text) == text
    assert redactor.text("KEY=sk-ant-api03-Qx7\n") == "KEY=[redacted:ANTHROPIC]\n"


def test_a_value_is_caught_as_javascript_escapes_it_and_escaped_twice() -> None:
    value = 'pä"ss\\wörd-Ünï9'
    redactor = Redactor({"PASSWORD": value})
    as_javascript = json.dumps(value, ensure_ascii=False)  # Claude Code's transcript
    assert redactor.text(as_javascript) == '"[redacted:PASSWORD]"'

    def quoted_twice(said: str) -> str:  # a tool's JSON output inside the transcript's JSON
        return json.dumps(json.dumps({"out": said}, ensure_ascii=False), ensure_ascii=False)

    assert redactor.text(quoted_twice(value)) == quoted_twice("[redacted:PASSWORD]")
