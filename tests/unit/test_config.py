"""Where data and downloads go by default: the checkout's `.data/` and `.cache/` when
running from a checkout, per-user XDG folders when installed; the environment wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice import config
from sluice.config import Settings, project_root


@pytest.fixture(autouse=True)
def bare_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("SLUICE_HOME", "SLUICE_CACHE", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The package as a wheel installs it: in site-packages, with no pyproject.toml or .git beside it."""
    package = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "sluice"
    package.mkdir(parents=True)
    monkeypatch.setattr(config, "PACKAGE_DIR", package)


def test_a_checkout_keeps_data_and_cache_in_the_checkout() -> None:
    assert config.checkout_root() == project_root()
    s = Settings()
    assert (s.sluice_home, s.sluice_cache) == (project_root() / ".data", project_root() / ".cache")


def test_an_installed_package_uses_the_per_user_folders(installed: None, bare_environment: Path) -> None:
    assert config.checkout_root() is None
    s = Settings()
    assert s.sluice_home == bare_environment / ".local" / "state" / "sluice"
    assert s.sluice_cache == bare_environment / ".cache" / "sluice"
    assert s.chdb_path == bare_environment / ".local" / "state" / "sluice" / "clickhouse"


def test_xdg_folders_are_followed_when_absolute(installed: None, bare_environment: Path,
                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG rules say: ignore it
    s = Settings()
    assert s.sluice_home == tmp_path / "state" / "sluice"
    assert s.sluice_cache == bare_environment / ".cache" / "sluice"


def test_the_environment_wins_everywhere(installed: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLUICE_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("SLUICE_CACHE", str(tmp_path / "c"))
    s = Settings()
    assert (s.sluice_home, s.sluice_cache) == (tmp_path / "h", tmp_path / "c")
