"""The registry folder: `<root>/<model>/<version>/{manifest.json, artifact}`.

A version is immutable once written. `push` builds it in a temporary folder beside its final
place and renames it in, so a reader never sees half a version. Anything that is not a valid
name, not a positive integer version or a symlink is ignored with a warning, never followed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.errors import RegistryError

__all__ = [
    "MANIFEST",
    "NAME_RE",
    "list_models",
    "list_versions",
    "push",
    "read_manifest",
    "sha256_file",
    "validate_name",
    "verify_artifact",
    "version_dir",
]

log = logging.getLogger("gatewatch.registry")

MANIFEST = "manifest.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION_RE = re.compile(r"^[1-9][0-9]{0,8}$")


def validate_name(name: str) -> str:
    """Refuse a model name before it touches the filesystem (no traversal, no odd characters)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise RegistryError(f"invalid model name {name!r}: must match {NAME_RE.pattern}")
    return name


def _real_child(parent: Path, child: str) -> Path | None:
    path = parent / child
    if path.is_symlink():
        log.warning("registry: ignoring symlink %s (symlinks are never followed)", path)
        return None
    return path


def list_models(root: str | Path) -> list[str]:
    """Model names with at least one folder; anything else in the root is ignored with a warning."""
    root = Path(root)
    if not root.is_dir():
        return []
    names = []
    for entry in sorted(os.listdir(root)):
        if entry.startswith(".") and entry.endswith(".tmp"):
            continue
        path = _real_child(root, entry)
        if path is None or not path.is_dir():
            continue
        if not NAME_RE.fullmatch(entry):
            log.warning("registry: ignoring %s (not a valid model name)", path)
            continue
        names.append(entry)
    return names


def list_versions(root: str | Path, name: str) -> list[int]:
    """Complete versions of a model, oldest first (a version folder holds a manifest)."""
    model_dir = Path(root) / validate_name(name)
    if model_dir.is_symlink() or not model_dir.is_dir():
        return []
    versions = []
    for entry in os.listdir(model_dir):
        if entry.startswith("."):
            continue
        path = _real_child(model_dir, entry)
        if path is None or not path.is_dir():
            continue
        if not _VERSION_RE.fullmatch(entry):
            log.warning("registry: ignoring %s (a version is a positive integer)", path)
            continue
        if (path / MANIFEST).is_file():
            versions.append(int(entry))
    return sorted(versions)


def version_dir(root: str | Path, name: str, version: int) -> Path:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RegistryError(f"invalid version {version!r} of {name!r}: a positive integer")
    return Path(root) / validate_name(name) / str(version)


def read_manifest(root: str | Path, name: str, version: int) -> dict[str, Any]:
    """The parsed manifest of one version; a missing or malformed one is a RegistryError."""
    folder = version_dir(root, name, version)
    path = folder / MANIFEST
    if folder.is_symlink() or path.is_symlink():
        raise RegistryError(f"{name} v{version}: refusing a symlinked version")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{name} v{version}: no such version in the registry") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RegistryError(f"{name} v{version}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict):
        raise RegistryError(f"{name} v{version}: manifest is not a JSON object")
    for key in ("name", "version", "flavor", "artifact", "sha256", "task", "inputs"):
        if key not in manifest:
            raise RegistryError(f"{name} v{version}: manifest lacks {key!r}")
    if manifest["name"] != name or manifest["version"] != version:
        raise RegistryError(
            f"{name} v{version}: manifest names {manifest['name']} v{manifest['version']}"
        )
    return manifest


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_artifact(root: str | Path, manifest: Mapping[str, Any]) -> Path:
    """The artifact's path once its sha256 matches the manifest; otherwise a RegistryError."""
    folder = version_dir(root, manifest["name"], manifest["version"])
    artifact = str(manifest["artifact"])
    if "/" in artifact or "\\" in artifact or artifact.startswith("."):
        raise RegistryError(
            f"{manifest['name']} v{manifest['version']}: bad artifact name {artifact!r}"
        )
    path = folder / artifact
    if path.is_symlink() or not path.is_file():
        raise RegistryError(
            f"{manifest['name']} v{manifest['version']}: artifact {artifact} missing"
        )
    actual = sha256_file(path)
    if actual != manifest["sha256"]:
        raise RegistryError(
            f"{manifest['name']} v{manifest['version']}: artifact {artifact} sha256 {actual[:12]}… "
            f"does not match the manifest's {str(manifest['sha256'])[:12]}…; refusing to load it"
        )
    return path


def push(root: str | Path, manifest: dict[str, Any], artifact: str | Path) -> int:
    """Write the next version of `manifest["name"]` atomically and return its number.

    The version number is chosen here; if another writer takes it first, the rename fails and
    the next number is tried, so two concurrent pushes never overwrite each other.
    """
    name = validate_name(manifest["name"])
    model_dir = Path(root) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    artifact = Path(artifact)
    staging = Path(tempfile.mkdtemp(prefix=".push-", suffix=".tmp", dir=model_dir))
    try:
        existing = list_versions(root, name)
        version = existing[-1] if existing else 0
        for _ in range(100):
            # A number whose folder exists (even one that is not a complete version) is skipped.
            version += 1
            manifest = {**manifest, "version": version}
            shutil.copyfile(artifact, staging / manifest["artifact"])
            with open(staging / MANIFEST, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=2, sort_keys=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            target = model_dir / str(version)
            if target.exists() or target.is_symlink():
                continue
            try:
                os.rename(staging, target)
            except OSError:
                continue
            return version
        raise RegistryError(f"{name}: could not find a free version number")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
