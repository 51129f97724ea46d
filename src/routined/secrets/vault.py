"""Secrets: values a routine's runs get as environment variables, encrypted at rest.

A value is stored as a Fernet token (AES-128-CBC with an HMAC): the store alone
reveals nothing. The key is ROUTINED_SECRET_KEY when set, else the file
`$ROUTINED_HOME/secret.key`, made at the first write; whoever holds the store and
the key holds the secrets. Values leave only through `reveal` (to a run) and are
kept out of what a run records and leaves behind by `routined.secrets.redaction`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from routined.config import Settings
from routined.errors import RoutinedError
from routined.models import Account, Secret
from routined.variables import check_variable_name

# The most a value may hold: the kernel refuses an environment string past 128 KiB.
MAX_VALUE = 65_536

KEY_FILE = "secret.key"


class VaultError(RoutinedError):
    """Secrets cannot be written or read as asked; the message says what to do."""


def set_secret(
    session: Session, settings: Settings, *, account_id: str, name: str, value: str, now: datetime
) -> bool:
    """Store `value` under `name` for the account: True if created, False if replaced.

    Bad input raises ValueError naming the field; a key that cannot be used, VaultError.
    """
    check_variable_name(name)
    if not value:
        raise ValueError("value: empty; give the secret's value")
    if "\x00" in value:
        raise ValueError("value: contains a NUL character, which an environment variable cannot")
    if len(value) > MAX_VALUE:
        raise ValueError(f"value: {len(value)} characters is over the limit of {MAX_VALUE}")
    ciphertext = _fernet(settings, create=True).encrypt(value.encode()).decode("ascii")
    found = session.scalar(
        select(Secret).where(Secret.account_id == account_id, Secret.name == name)
    )
    if found is not None:
        found.ciphertext = ciphertext
        found.updated_at = now
        return False
    # Two first writes of one name race to the unique (account, name): one fails.
    session.add(
        Secret(
            account_id=account_id, name=name, ciphertext=ciphertext, created_at=now, updated_at=now
        )
    )
    session.flush()
    return True


def delete_secret(session: Session, *, account_id: str, name: str) -> bool:
    """Whether there was such a secret to delete."""
    result = session.execute(
        delete(Secret).where(Secret.account_id == account_id, Secret.name == name)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def list_secrets(session: Session, *, account_id: str) -> list[Secret]:
    """The account's secrets by name; show their names and times, never their values."""
    return list(
        session.scalars(select(Secret).where(Secret.account_id == account_id).order_by(Secret.name))
    )


def reveal(
    session: Session, settings: Settings, *, account_id: str, names: Sequence[str]
) -> dict[str, str]:
    """The values of `names` for a run; VaultError if any is missing or unreadable."""
    if not names:
        return {}
    stored = {
        secret.name: secret.ciphertext
        for secret in session.scalars(
            select(Secret).where(Secret.account_id == account_id, Secret.name.in_(set(names)))
        )
    }
    missing = [name for name in dict.fromkeys(names) if name not in stored]
    if missing:
        # One command per secret, each with its real name, so that the advice can be
        # copied as it is rather than filled in.
        account = _account_option(session, account_id)
        how = ", ".join(f"`routined secret set {name}{account}`" for name in missing)
        raise VaultError(
            f"no secret {', '.join(missing)} stored for this routine's account; "
            f"store {'it' if len(missing) == 1 else 'each'} with {how} (the value on stdin)"
        )
    fernet = _fernet(settings, create=False)
    values = {}
    for name in dict.fromkeys(names):
        try:
            values[name] = fernet.decrypt(stored[name]).decode()
        except InvalidToken:
            raise VaultError(
                f"secret {name} cannot be decrypted: the key changed since it was stored "
                f"({_key_source(settings)}); give the key it was stored with as well, after "
                "the current one (ROUTINED_SECRET_KEY=NEW,OLD), or store it again with "
                f"`routined secret set {name}{_account_option(session, account_id)}`"
            ) from None
    return values


@dataclass(frozen=True)
class Rotation:
    rotated: int
    unreadable: list[tuple[str, str]]  # (account id, name): under none of the keys


def rotate(session: Session, settings: Settings) -> Rotation:
    """Encrypt every stored secret again under the first key, from whichever key it
    was stored under, so that the others can be retired. A value none of the keys
    can read is left as it is, and named."""
    stored = list(session.scalars(select(Secret).order_by(Secret.account_id, Secret.name)))
    if not stored:
        return Rotation(rotated=0, unreadable=[])
    fernet = _fernet(settings, create=False)
    unreadable = []
    for secret in stored:
        try:
            secret.ciphertext = fernet.rotate(secret.ciphertext.encode()).decode("ascii")
        except InvalidToken:
            unreadable.append((secret.account_id, secret.name))
    return Rotation(rotated=len(stored) - len(unreadable), unreadable=unreadable)


def _fernet(settings: Settings, *, create: bool) -> MultiFernet:
    """The keys: the first encrypts, any of them decrypts (the others are those being
    rotated away from)."""
    configured = [key.strip() for key in settings.secret_key.reveal().split(",") if key.strip()]
    if configured:
        try:
            return MultiFernet([Fernet(key) for key in configured])
        except ValueError:  # binascii.Error, for bad base64, is one too
            raise VaultError(
                "ROUTINED_SECRET_KEY: not a Fernet key (32 bytes in URL-safe base64) nor a "
                "comma-separated list of them; `routined secret key` makes one"
            ) from None
    path = settings.home / KEY_FILE
    try:
        return _from_file(path)
    except FileNotFoundError:
        if not create:
            raise VaultError(
                f"no key to decrypt secrets with: {path} does not exist and "
                "ROUTINED_SECRET_KEY is not set; set it (or restore the file) to the key "
                "the secrets were stored with"
            ) from None
    return _from_file(_create_key_file(path))


def _from_file(path: Path) -> MultiFernet:
    try:
        return MultiFernet([Fernet(path.read_bytes().strip())])
    except ValueError:
        raise VaultError(
            f"{path}: not a Fernet key; restore the key secrets were stored with, or set "
            "ROUTINED_SECRET_KEY"
        ) from None
    except PermissionError as error:
        raise VaultError(f"{path}: cannot read the secret key: {error.strerror}") from None


def _create_key_file(path: Path) -> Path:
    """Write a new key to `path` unless another process got there first.

    1. Write the key whole to a file of our own, readable by the owner only.
    2. Link it to `path`: linking never replaces, so of processes racing to make
       the key exactly one succeeds and the rest use its key; a reader never sees
       a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # whatever the umask
        os.write(descriptor, Fernet.generate_key() + b"\n")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    try:
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return path


def _key_source(settings: Settings) -> str:
    if settings.secret_key:
        return "ROUTINED_SECRET_KEY"
    return str(settings.home / KEY_FILE)


def _account_option(session: Session, account_id: str) -> str:
    name = session.scalar(select(Account.name).where(Account.id == account_id))
    return "" if name in (None, "default") else f" --account {name}"
