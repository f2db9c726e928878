"""The directory backend a service's config names: a YAML file (the local cluster, tests) or
Consul (production). Apart from the directory's model, which both backends import."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from region_router.consul_directory import ConsulConfig, ConsulDirectory, ConsulSettings
from region_router.directory import Directory
from region_router.errors import DirectoryError
from region_router.yaml_directory import YamlDirectory


def build_directory(directory_file: str | None, consul: ConsulSettings | dict | None) -> Directory:
    """The directory a service's config names: exactly one of a YAML file (the local cluster,
    tests) or Consul (production, one datacenter per region). The Consul ACL token never comes
    from the config: ``consul.token_file`` or the ``CONSUL_HTTP_TOKEN`` environment variable."""
    if (directory_file is None) == (consul is None):
        raise DirectoryError("configure exactly one of directory_file and consul")
    if directory_file is not None:
        return YamlDirectory(directory_file)
    if isinstance(consul, dict):
        if "token" in consul:
            raise DirectoryError("consul.token must not be in a config file: use token_file")
        try:
            consul = msgspec.convert(consul, ConsulSettings, strict=True)
        except msgspec.ValidationError as exc:
            message = str(exc).replace("Object contains unknown field", "unknown keys:")
            raise DirectoryError(f"consul: {message}") from exc
    token = Path(consul.token_file).read_text().strip() if consul.token_file else None
    token = token or os.environ.get("CONSUL_HTTP_TOKEN") or None
    return ConsulDirectory(ConsulConfig(**msgspec.structs.asdict(consul), token=token))
