"""The directory backend a service's config names: a YAML file (the local cluster, tests) or
Consul (production). Apart from the directory's model, which both backends import."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

from region_router.consul_directory import ConsulConfig, ConsulDirectory
from region_router.directory import Directory
from region_router.errors import DirectoryError
from region_router.yaml_directory import YamlDirectory


def build_directory(directory_file: str | None, consul: dict | None) -> Directory:
    """The directory a service's config names: exactly one of a YAML file (the local cluster,
    tests) or Consul (production, one datacenter per region). The Consul ACL token never comes
    from the config: ``consul.token_file`` or the ``CONSUL_HTTP_TOKEN`` environment variable."""
    if (directory_file is None) == (consul is None):
        raise DirectoryError("configure exactly one of directory_file and consul")
    if directory_file is not None:
        return YamlDirectory(directory_file)
    raw = dict(consul)
    if "token" in raw:
        raise DirectoryError("consul.token must not be in a config file: use consul.token_file")
    token_file = raw.pop("token_file", None)
    token = Path(token_file).read_text().strip() if token_file else None
    token = token or os.environ.get("CONSUL_HTTP_TOKEN") or None
    known = {f.name for f in fields(ConsulConfig)} - {"token"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DirectoryError(f"consul: unknown keys {unknown}")
    raw["datacenters"] = tuple(raw.get("datacenters", ()))
    return ConsulDirectory(ConsulConfig(**raw, token=token))
