"""A Prometheus server for the local cluster (``./dev up --observe``) and the alerting test:
Debian's ``prometheus`` binary, a config written for the cluster's processes (each target
labelled with its ``job`` and ``service_region``, as infra/prometheus/rules.yml expects), the
project's rules loaded, data in a directory of its own, listening on loopback only."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from infra.errors import ServiceStartError
from infra.processes import http_ready
from infra.services import terminate

RULES_FILE = Path(__file__).resolve().parent / "prometheus" / "rules.yml"
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Target:
    job: str
    """regiongate-gateway, regiongate-ledger or regiongate-audit."""
    service_region: str
    address: str
    """host:port of the process's metrics endpoint."""


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


@dataclass
class PrometheusServer:
    data_dir: Path
    port: int
    targets: list[Target]
    scrape_interval_s: float = 5.0
    evaluation_interval_s: float = 5.0
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict:
        jobs: dict[str, list[Target]] = {}
        for target in self.targets:
            jobs.setdefault(target.job, []).append(target)
        return {
            "global": {
                "scrape_interval": f"{round(self.scrape_interval_s * 1000)}ms",
                "evaluation_interval": f"{round(self.evaluation_interval_s * 1000)}ms",
            },
            "rule_files": [str(RULES_FILE)],
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [
                        {"targets": [t.address], "labels": {"service_region": t.service_region}}
                        for t in targets
                    ],
                }
                for job, targets in sorted(jobs.items())
            ],
        }

    def start(self) -> None:
        binary = prometheus_binary()
        if binary is None:
            raise ServiceStartError(
                "prometheus not found; install it with 'apt-get install -y prometheus'"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_file = self.data_dir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        with open(self.data_dir / "prometheus.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={self.data_dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1d",
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        if not http_ready(f"{self.url}/-/ready", READY_TIMEOUT_S):
            self.stop()
            tail = (self.data_dir / "prometheus.log").read_text(errors="replace")[-2000:]
            raise ServiceStartError(f"prometheus did not get ready:\n{tail}")

    def stop(self) -> None:
        terminate(self.process)

    def alerts(self) -> list[dict]:
        """The alerts Prometheus holds now (pending or firing), from its HTTP API."""
        with urllib.request.urlopen(f"{self.url}/api/v1/alerts", timeout=5) as response:  # noqa: S310
            return json.loads(response.read())["data"]["alerts"]
