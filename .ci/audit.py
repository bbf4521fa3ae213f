"""Dependency audit of both environments (`make audit`, run by `.ci/run`): pip-audit over exactly
what is installed in `.venv` and `.venv-vllm`, minus the advisories `requirements/audit-allow.toml`
accepts (each with the reason).

pip-audit reports "No known vulnerabilities found" and exits 0 when its vulnerability source
answers nothing (every package "not found": a mirror without PyPI's JSON API), which would pass
silently. So a run where no package could be looked up counts as *not audited*: the script tries
PyPI's advisory data, then OSV, and exits 3 with a banner naming what was unreachable.

Exit status: 0 audited and clean, 1 vulnerabilities outside the allow-list, 2 usage or
environment error, 3 no vulnerability source reachable (nothing was checked); with
`--allow-unreachable` (CI on machines without those sources) that last case exits 0 after the banner.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENTS = {"app (.venv)": ROOT / ".venv/bin/python", "engine (.venv-vllm)": ROOT / ".venv-vllm/bin/python"}
ALLOW_FILE = ROOT / "requirements/audit-allow.toml"
PIP_AUDIT = ROOT / ".venv/bin/pip-audit"
SERVICES = ("pypi", "osv")
UNREACHABLE, VULNERABLE = 3, 1


@dataclass(frozen=True)
class Allowed:
    package: str
    version: str
    id: str | None
    reason: str

    def covers(self, package: str, version: str, vuln_id: str, aliases: list[str]) -> bool:
        same = package.lower() == self.package.lower() and version == self.version
        return same and (self.id is None or self.id == vuln_id or self.id in aliases)


def load_allow_list(path: Path) -> list[Allowed]:
    entries = tomllib.loads(path.read_text(encoding="utf-8")).get("allow", [])
    allowed = []
    for entry in entries:
        if not entry.get("reason") or not entry.get("package") or not entry.get("version"):
            raise SystemExit(f"{path}: every [[allow]] entry needs package, version and reason: {entry}")
        allowed.append(Allowed(entry["package"], entry["version"], entry.get("id"), entry["reason"]))
    return allowed


def installed(python: Path) -> list[str]:
    """`name==version` of every installed distribution; local labels (`+cpu`) dropped, since the
    advisory databases know the public release only."""
    out = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--all", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pins = []
    for line in out.splitlines():
        if "==" in line and not line.startswith(("-", "#")):
            name, version = line.split("==", 1)
            pins.append(f"{name}=={version.split('+', 1)[0]}")
    return pins


def audit(pins: list[str], service: str) -> tuple[list[dict[str, object]], int] | str:
    """(dependencies with their vulnerabilities, how many could be looked up), or why it failed."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirements:
        requirements.write("\n".join(pins) + "\n")
        requirements.flush()
        command = [str(PIP_AUDIT), "-r", requirements.name, "--no-deps", "--disable-pip", "-f", "json"]
        command += ["-s", service, "--progress-spinner", "off", "--timeout", "30"]
        run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=1800)
    try:
        report = json.loads(run.stdout)
    except ValueError:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        return f"pip-audit -s {service} failed: {last[:300]}"
    deps = report.get("dependencies", [])
    looked_up = sum("skip_reason" not in d for d in deps)
    if not looked_up:
        return f"pip-audit -s {service}: none of {len(deps)} packages could be looked up (source unreachable)"
    return deps, looked_up


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--allow-unreachable"]):
        print("usage: python .ci/audit.py [--allow-unreachable]")
        return 2
    if not PIP_AUDIT.is_file():
        print(f"audit: {PIP_AUDIT} is missing; install the dev dependencies (make install)")
        return 2
    allowed = load_allow_list(ALLOW_FILE)
    status = 0
    for label, python in ENVIRONMENTS.items():
        if not python.is_file():
            print(f"audit: {label}: {python} is missing")
            return 2
        pins = installed(python)
        failures = []
        for service in SERVICES:
            result = audit(pins, service)
            if isinstance(result, str):
                failures.append(result)
                continue
            deps, looked_up = result
            found = accepted = 0
            for dep in deps:
                for vuln in dep.get("vulns", []):  # type: ignore[attr-defined]
                    found += 1
                    name, version = str(dep["name"]), str(dep.get("version"))
                    rule = next(
                        (a for a in allowed if a.covers(name, version, vuln["id"], vuln.get("aliases", []))), None
                    )
                    if rule is not None:
                        accepted += 1
                        print(f"audit: {label}: {name} {version} {vuln['id']} accepted: {rule.reason}")
                    else:
                        status = VULNERABLE
                        fixes = ", ".join(vuln.get("fix_versions", [])) or "no fixed release"
                        print(f"audit: {label}: VULNERABLE {name} {version} {vuln['id']} (fixed in: {fixes})")
            skipped = len(deps) - looked_up
            print(
                f"audit: {label}: {looked_up} packages checked against {service} ({skipped} not found there), "
                f"{found} advisories, {accepted} accepted by {ALLOW_FILE.name}"
            )
            break
        else:
            print("=" * 78)
            print(f"audit: {label}: NOT AUDITED - no vulnerability source could be reached from this machine:")
            for failure in failures:
                print(f"audit:   {failure}")
            print("=" * 78)
            status = status or UNREACHABLE
    if status == UNREACHABLE and args:
        print("audit: continuing without a dependency audit (--allow-unreachable)")
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
