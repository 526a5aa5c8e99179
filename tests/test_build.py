"""The build: the hot path runs compiled by mypyc where it was built, pure Python on request, and
never compiled code older than its source."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from importlib import machinery
from pathlib import Path

import pytest

import lbproxy
from lbproxy import _build, relay

SUFFIX = machinery.EXTENSION_SUFFIXES[0]


PURE = bool(os.environ.get("LBPROXY_PURE"))


def test_the_hot_path_runs_as_the_environment_asks() -> None:
    if PURE:
        assert not lbproxy.compiled
        assert relay.__file__.endswith(".py")
        assert lbproxy.BUILD == "pure Python"
        return
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: the package was built pure Python")
    assert lbproxy.compiled, "make build (pip install -e .) compiles the hot path with mypyc"
    assert relay.__file__.endswith(SUFFIX)
    assert lbproxy.BUILD == "hot path compiled by mypyc"


def test_version_says_which_build_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lbproxy", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == f"lbproxy {lbproxy.__version__} ({lbproxy.BUILD})"


def test_pure_python_on_request_in_a_fresh_interpreter() -> None:
    code = "import lbproxy, lbproxy.relay as r; print(lbproxy.compiled, r.__file__)"
    env = {**os.environ, "LBPROXY_PURE": "1"}
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    flag, path = done.stdout.split()
    assert flag == "False"
    assert path.endswith("relay.py")


@pytest.fixture
def not_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    """``choose`` is tested as it runs without LBPROXY_PURE (make test's second pass sets it)."""
    monkeypatch.delenv("LBPROXY_PURE", raising=False)


@pytest.fixture
def package(tmp_path: Path, not_pure: None) -> Iterator[Path]:
    """A package directory holding every compiled module's source and extension."""
    for name in _build.COMPILED:
        (tmp_path / f"{name}.py").write_text(f"# {name}\n")
        (tmp_path / f"{name}{SUFFIX}").write_bytes(b"")
    (tmp_path / _build.MANIFEST).write_text(json.dumps(_build.digests(tmp_path)))
    yield tmp_path
    sys.path_importer_cache.pop(str(tmp_path), None)


def test_fresh_extensions_run(package: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _build.choose(str(package))
    assert str(package) not in sys.path_importer_cache


def test_a_source_edited_after_the_build_runs_pure_python(package: Path) -> None:
    (package / "relay.py").write_text("# edited\n")
    with pytest.warns(RuntimeWarning, match=r"relay\.py changed since the build.*make build"):
        assert not _build.choose(str(package))
    finder = sys.path_importer_cache[str(package)]
    assert isinstance(finder, machinery.FileFinder)
    spec = finder.find_spec("relay")
    assert spec is not None and spec.origin == str(package / "relay.py")


def test_an_edit_undone_runs_compiled_again(package: Path) -> None:
    (package / "relay.py").write_text("# edited\n")
    (package / "relay.py").write_text("# relay\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _build.choose(str(package))


def test_extensions_without_a_record_of_their_sources_run_pure_python(package: Path) -> None:
    (package / _build.MANIFEST).unlink()
    with pytest.warns(RuntimeWarning, match=r"acl\.py, .*upstream\.py changed since the build"):
        assert not _build.choose(str(package))


def test_some_extensions_missing_runs_pure_python(package: Path) -> None:
    (package / f"tries{SUFFIX}").unlink()
    with pytest.warns(RuntimeWarning, match="some compiled modules are missing"):
        assert not _build.choose(str(package))


def test_no_extensions_at_all_is_pure_python_without_a_word(tmp_path: Path, not_pure: None) -> None:
    for name in _build.COMPILED:
        (tmp_path / f"{name}.py").write_text("")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _build.choose(str(tmp_path))
