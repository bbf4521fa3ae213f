"""`.ci/audit.py` (make audit): an unreachable vulnerability source is reported as *not audited*
(exit 3), never as clean; advisories fail the audit unless the allow-list accepts that version.
pip-audit is replaced by a stub printing canned JSON: its real sources cannot be reached here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from config.settings import REPO_ROOT


def load_audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_audit", REPO_ROOT / ".ci" / "audit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def stub(tmp_path: Path, report: dict[str, object] | None) -> Path:
    """A pip-audit that prints `report` as JSON (None: fails like an unreachable source)."""
    script = tmp_path / "pip-audit"
    body = f"print({json.dumps(json.dumps(report))})" if report is not None else "raise SystemExit('ConnectionError')"
    script.write_text(f"#!{sys.executable}\n{body}\n")
    script.chmod(0o755)
    return script


@pytest.fixture
def audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = load_audit()
    monkeypatch.setattr(module, "ENVIRONMENTS", {"app": Path(sys.executable)})
    monkeypatch.setattr(module, "installed", lambda python: ["gptcache==0.1.44", "requests==2.0.0"])
    return module


def test_every_package_skipped_means_not_audited(audit: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    skipped = {"dependencies": [{"name": "requests", "skip_reason": "Dependency not found on PyPI"}], "fixes": []}
    monkeypatch.setattr(audit, "PIP_AUDIT", stub(tmp_path, skipped))
    assert audit.main([]) == audit.UNREACHABLE
    assert "NOT AUDITED" in capsys.readouterr().out
    assert audit.main(["--allow-unreachable"]) == 0, "CI goes on, after the banner"
    assert "NOT AUDITED" in capsys.readouterr().out
    monkeypatch.setattr(audit, "PIP_AUDIT", stub(tmp_path, None))
    assert audit.main([]) == audit.UNREACHABLE


def test_advisories_fail_unless_the_allow_list_accepts_that_version(
    audit: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def report(gptcache_version: str) -> dict[str, object]:
        vuln = {"id": "GHSA-xxxx", "aliases": ["CVE-2024-1"], "fix_versions": []}
        return {
            "dependencies": [
                {"name": "gptcache", "version": gptcache_version, "vulns": [vuln]},
                {"name": "requests", "version": "2.0.0", "vulns": []},
            ]
        }

    monkeypatch.setattr(audit, "PIP_AUDIT", stub(tmp_path, report("0.1.44")))
    assert audit.main([]) == 0
    assert "accepted" in capsys.readouterr().out
    monkeypatch.setattr(audit, "PIP_AUDIT", stub(tmp_path, report("0.1.45")))
    assert audit.main(["--allow-unreachable"]) == audit.VULNERABLE
    assert "VULNERABLE gptcache 0.1.45 GHSA-xxxx" in capsys.readouterr().out


def test_the_allow_list_gives_a_reason_for_every_entry() -> None:
    entries = load_audit().load_allow_list(REPO_ROOT / "requirements" / "audit-allow.toml")
    assert entries and all(len(e.reason) > 20 for e in entries)
