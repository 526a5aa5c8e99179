"""Authorizations changed at runtime, kept across restarts: the state file.

Theory of operation. The configuration file stays the operator's; the admin API never rewrites
it. Authorizations created, updated or deleted through the admin API are written, as the whole
list, to the gateway's ``state_file`` (JSON: ``{"authorizations": [{...}, ...]}``, each entry
with the fields of an ``[[authorization]]`` table). When that file exists, ``run`` takes its list
in place of the configuration file's ``[[authorization]]`` tables, so a restart loses nothing.
Every list, from the file or the admin API, is validated by the same ``parse_config`` as the
configuration file, so a runtime change can never make a configuration ``check`` would refuse.

Writes are atomic: a temporary file in the same directory, flushed and fsync'ed, renamed over the
old one, then the directory fsync'ed; a crash leaves the old list or the new one, never half.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import tomllib
from typing import Any

from lbproxy.config import Config
from lbproxy.configload import parse_config
from lbproxy.errors import ConfigError, ConfigProblem

Document = dict[str, Any]
AuthorizationFields = dict[str, Any]


def read_document(path: str) -> Document:
    """The configuration file as parsed TOML; ``ConfigError`` if unreadable."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError([ConfigProblem(path, "(file)", f"cannot read: {exc.strerror}")]) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(path, "(syntax)", f"invalid TOML: {exc}")]) from exc


def state_path(config: Config) -> str | None:
    """Where the state file is: ``state_file`` relative to the configuration file's directory."""
    state_file = config.gateway.state_file
    if not state_file:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(config.file)), state_file)


def read_state(path: str) -> list[AuthorizationFields] | None:
    """The saved authorizations, or None when there is no state file yet."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError([ConfigProblem(path, "(state file)", f"cannot read: {exc}")]) from exc
    entries = data.get("authorizations") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        message = 'expected {"authorizations": [{...}, ...]}; fix or remove the file'
        raise ConfigError([ConfigProblem(path, "(state file)", message)])
    return entries


def with_authorizations(
    document: Document, authorizations: list[AuthorizationFields], file: str
) -> Config:
    """The configuration ``document`` with ``authorizations`` in place of its own, validated
    exactly like a file (``ConfigError`` naming ``authorization[i].key`` on any problem)."""
    merged = copy.deepcopy(document)
    merged["authorization"] = copy.deepcopy(authorizations)
    return parse_config(merged, file)


def load_with_state(path: str) -> tuple[Config, Document]:
    """The configuration for ``run``: the file, with the state file's authorizations when it
    has one. Returns the document in effect too (the file's tables, the saved authorizations),
    which the admin API's later changes start from."""
    document = read_document(path)
    config = parse_config(document, path)
    state = state_path(config)
    saved = read_state(state) if state else None
    if saved is not None:
        config = with_authorizations(document, saved, path)
        # The admin API's changes start from the list in effect, the saved one.
        document = {**document, "authorization": saved}
    return config, document


def save_state(path: str, authorizations: list[AuthorizationFields]) -> None:
    """Write the whole list atomically (temp file, fsync, rename, fsync the directory)."""
    directory = os.path.dirname(path) or "."
    text = json.dumps({"authorizations": authorizations}, indent=2, sort_keys=True) + "\n"
    fd, temp = tempfile.mkstemp(prefix=".lbproxy-state-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
