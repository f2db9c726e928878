"""The regiongate command as a first-hour user meets it: with no cluster running, every command
that needs one says so in one line and exits 1 (no traceback); a second ``local up`` on a data
dir one is running from says so before it touches anything; ``local token`` mints the
development tokens a client developer needs, each with exactly the claims asked for; and the
top-level help reads as plain text."""

from __future__ import annotations

import json
import subprocess
import sys

import jwt
import pytest

from infra.devkeys import DEV_AUDIENCE, DEV_ISSUER, ensure_dev_keys
from infra.errors import ClusterAlreadyRunning
from infra.local import STATE_FILE, LocalCluster
from regiongate_cli import main


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "regiongate_cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("local", "demo"),
        ("audit",),
        ("load", "run", "--profile", "smoke"),
        ("local", "token", "--scope", "admin"),
    ],
)
@pytest.mark.parametrize("stale_state", [False, True])
def test_with_no_cluster_running_a_command_says_so_in_one_line(tmp_path, argv, stale_state):
    if stale_state:  # a cluster that ran once and stopped leaves its state file
        (tmp_path / STATE_FILE).write_text(json.dumps({"gateways": {}, "ledger_dsns": {}}))
    answer = run_cli(*argv, "--data-dir", str(tmp_path))
    assert answer.returncode == 1, answer
    lines = answer.stderr.strip().splitlines()
    assert len(lines) == 1 and "no local cluster is running" in lines[0], answer.stderr
    assert "./dev up" in lines[0] and "Traceback" not in answer.stderr


def test_a_second_cluster_on_the_same_data_dir_is_refused_before_it_starts(tmp_path):
    first = LocalCluster(root=tmp_path, regions=["eu"])
    first._lock()
    try:
        second = LocalCluster(root=tmp_path, regions=["eu"])
        with pytest.raises(ClusterAlreadyRunning, match="already running"):
            second.start()
        assert not (tmp_path / "postgres").exists() and second.redis is None
    finally:
        first.stop()


def test_local_token_mints_each_scope_with_the_claims_asked_for(tmp_path, capsys):
    keys = ensure_dev_keys(tmp_path / "secrets")
    (tmp_path / STATE_FILE).write_text(
        json.dumps({"dev_private_key": str(keys.private_key_file), "dev_jwks": str(keys.jwks_file)})
    )
    holder = LocalCluster(root=tmp_path, regions=["eu"])
    holder._lock()
    try:
        cases = [
            (["--scope", "wallet", "--accounts", "eu-a,eu-b"], {"accounts": ["eu-a", "eu-b"]}),
            (["--scope", "game:server", "--operator", "op-7"], {"operator": "op-7"}),
            (["--scope", "admin", "--home-region", "us"], {"home_region": "us"}),
        ]
        public = jwt.PyJWKSet.from_json(keys.jwks_file.read_text()).keys[0].key
        for argv, expected in cases:
            assert main(["local", "token", *argv, "--data-dir", str(tmp_path)]) == 0
            token = capsys.readouterr().out.strip()
            claims = jwt.decode(
                token, public, algorithms=["ES256"], audience=DEV_AUDIENCE, issuer=DEV_ISSUER
            )
            assert claims["scope"] == argv[1]
            assert {k: claims[k] for k in expected} == expected
        assert main(["local", "token", "--scope", "wallet", "--data-dir", str(tmp_path)]) == 2
        assert "--accounts" in capsys.readouterr().err
    finally:
        holder.stop()


def test_the_top_level_help_is_plain_text():
    answer = run_cli("--help")
    assert answer.returncode == 0 and "``" not in answer.stdout
    assert "local" in answer.stdout and "audit" in answer.stdout
