"""Authorizations and server weights changed at runtime, kept across restarts: the state file.

Theory of operation. The configuration file stays the operator's; the admin API never rewrites
it. Authorizations created, updated or deleted through the admin API are written, as the whole
list, to the gateway's ``state_file`` (JSON: ``{"authorizations": [{...}, ...]}``, each entry
with the fields of an ``[[authorization]]`` table). When that file exists, ``run`` takes its list
in place of the configuration file's ``[[authorization]]`` tables, so a restart loses nothing.
Every list, from the file or the admin API, is validated by the same ``parse_config`` as the
configuration file, so a runtime change can never make a configuration ``check`` would refuse.

The admin API's server actions (drain, enable, weight; status.py) are saved there too, as
``"servers": {"lb-id:port": {"instance:port": weight}}`` (a server at its configured weight has
no entry). Every runtime applies them when it starts or reloads, so with several workers one
worker saves a change and has the others reload (daemon.py), and a restart keeps drains.

Writes are atomic: a temporary file in the same directory, flushed and fsync'ed, renamed over the
old one, then the directory fsync'ed; a crash leaves the old list or the new one, never half.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import tempfile
import tomllib
from collections.abc import Iterator
from typing import Any

from lbproxy.config import Config
from lbproxy.configload import parse_config
from lbproxy.errors import ConfigError, ConfigProblem

Document = dict[str, Any]
AuthorizationFields = dict[str, Any]
Weights = dict[str, dict[str, int]]  # listener -> server -> weight


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


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError([ConfigProblem(path, "(state file)", f"cannot read: {exc}")]) from exc
    if not isinstance(data, dict):
        message = 'expected {"authorizations": [{...}, ...], "servers": {...}}; fix or remove it'
        raise ConfigError([ConfigProblem(path, "(state file)", message)])
    return data


def read_state(path: str) -> list[AuthorizationFields] | None:
    """The saved authorizations, or None when none were saved (no state file yet, or only
    server weights in it)."""
    data = _read(path)
    if data is None or "authorizations" not in data:
        return None
    entries = data["authorizations"]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        message = 'expected {"authorizations": [{...}, ...]}; fix or remove the file'
        raise ConfigError([ConfigProblem(path, "(state file)", message)])
    return entries


def read_weights(path: str) -> Weights:
    """The saved server weights (none without a state file)."""
    return _weights(_read(path) or {}, path)


def _weights(data: dict[str, Any], path: str) -> Weights:
    servers = data.get("servers", {})
    valid = isinstance(servers, dict) and all(
        isinstance(hosts, dict) and all(type(w) is int and w >= 0 for w in hosts.values())
        for hosts in servers.values()
    )
    if not valid:
        message = 'expected "servers": {"lb-id:port": {"instance:port": weight}}; fix or remove it'
        raise ConfigError([ConfigProblem(path, "servers", message)])
    weights: Weights = servers  # checked just above
    return weights


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Hold the state file's lock (``PATH.lock``, flock) for a read-modify-write: workers
    saving at once would otherwise lose each other's changes."""
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def save_weight(path: str, listener: str, server: str, weight: int | None) -> None:
    """Save one server's weight (None: back to the configured one, the entry removed); the
    rest of the file is kept."""
    with _locked(path):
        data = _read(path) or {}
        weights = _weights(data, path)
        hosts = weights.setdefault(listener, {})
        if weight is None:
            hosts.pop(server, None)
        else:
            hosts[server] = weight
        data["servers"] = {name: hosts for name, hosts in weights.items() if hosts}
        _write(path, data)


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
    """Save the whole list of authorizations; the saved server weights are kept."""
    with _locked(path):
        data = _read(path) or {}
        data["authorizations"] = authorizations
        _write(path, data)


def _write(path: str, data: dict[str, Any]) -> None:
    """Atomically: a temporary file, fsync, rename, fsync the directory."""
    directory = os.path.dirname(path) or "."
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
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
