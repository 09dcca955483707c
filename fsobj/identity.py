"""Identity files: create, load (unlock), export the public part.

Owns: the JSON files under ``~/.config/fsobj/`` (or ``--identity PATH``) and
where a passphrase comes from. The private keys are sealed with AES-256-GCM
under an scrypt key derived from the passphrase (docs/format.md, "Identity
file"); the public part can be shared freely (``fsobj identity export``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fsobj import crypto
from fsobj.errors import ExistsError, FormatError, IdentityError

IDENTITY_FORMAT = 1
PUBLIC_FORMAT = 1


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "fsobj" / "identity.json"


def create(path: Path, name: str, passphrase: str, *, overwrite: bool = False) -> crypto.Identity:
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExistsError(f"identity file {path} already exists")
    ident = crypto.Identity.generate(name)
    pub = ident.public
    doc = {
        "fsobj_identity": IDENTITY_FORMAT,
        "name": name,
        "user_id": pub.user_id.hex(),
        "sign_pub": pub.sign_pub.hex(),
        "kx_pub": pub.kx_pub.hex(),
        "kx_sig": pub.kx_sig.hex(),
        **crypto.seal_with_passphrase(ident.private_bytes(), passphrase, pub.user_id),
    }
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    return ident


def _read(path: Path) -> dict:
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise IdentityError(
            f"no identity at {path}: create one with 'fsobj identity create' or pass --identity"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise IdentityError(f"identity file {path} is unreadable: {e}") from e
    if not isinstance(doc, dict):
        raise IdentityError(f"{path} is not an fsobj identity file")
    return doc


def load_public(path: Path) -> crypto.PublicIdentity:
    """The public identity in an identity file or an exported public file."""
    doc = _read(Path(path))
    if doc.get("fsobj_identity") not in (None, IDENTITY_FORMAT) or doc.get("fsobj_public_identity") not in (
        None,
        PUBLIC_FORMAT,
    ):
        raise FormatError(f"{path}: unknown identity format")
    try:
        pub = crypto.PublicIdentity(
            doc["name"], bytes.fromhex(doc["sign_pub"]), bytes.fromhex(doc["kx_pub"]), bytes.fromhex(doc["kx_sig"])
        )
    except (KeyError, ValueError, TypeError) as e:
        raise IdentityError(f"{path} is not an fsobj identity file") from e
    try:
        pub.check()
    except Exception as e:
        raise IdentityError(f"{path}: the identity's keys do not belong together") from e
    if "user_id" in doc and doc["user_id"] != pub.user_id.hex():
        raise IdentityError(f"{path}: user id does not match the signing key")
    return pub


def load(path: Path, passphrase: str) -> crypto.Identity:
    """Unlock an identity file with its passphrase."""
    path = Path(path)
    doc = _read(path)
    if doc.get("fsobj_identity") != IDENTITY_FORMAT:
        raise IdentityError(f"{path} is not a private fsobj identity file (format {doc.get('fsobj_identity')!r})")
    pub = load_public(path)
    raw = crypto.open_with_passphrase(doc, passphrase, pub.user_id)
    ident = crypto.Identity.from_private_bytes(pub.name, raw)
    if ident.user_id != pub.user_id:
        raise IdentityError(f"{path}: private keys do not match the public keys")
    return ident


def export_public(pub: crypto.PublicIdentity) -> str:
    return json.dumps(
        {
            "fsobj_public_identity": PUBLIC_FORMAT,
            "name": pub.name,
            "user_id": pub.user_id.hex(),
            "sign_pub": pub.sign_pub.hex(),
            "kx_pub": pub.kx_pub.hex(),
            "kx_sig": pub.kx_sig.hex(),
        },
        indent=2,
    )
