"""The bench's fleet mode: several nodes on one Postgres behind nginx, compared (issue 19).

The end-to-end test runs `python -m bench --fleet` for one configuration (two nodes on a
throwaway Postgres, nginx balancing) and one short paid chat scenario, and reads its
results: the money check passed and both nodes served requests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from satsrouter_dev.postgres import postgres_bin_dir

from bench.__main__ import _parse_args
from bench.fleet import Config, FleetResult, fleet_table
from bench.load import RunResult, Scenario
from bench.nginx import nginx_binary, render_balancer_config
from bench.report import Row
from bench.wrk import _script

REPO = Path(__file__).resolve().parents[1]
RUN_WITHIN_S = 150


def test_configs_parse_and_several_sqlite_nodes_are_refused() -> None:
    assert Config.parse("postgres-2") == Config("postgres", 2, True)
    assert Config.parse("postgres-1") == Config("postgres", 1, False)
    assert Config.parse("postgres-1-lb").label == "1 PG + LB"
    assert Config.parse("sqlite-1").id == "sqlite-1"
    for bad in ("sqlite-2", "mysql-1", "postgres-0", "postgres"):
        with pytest.raises(ValueError):
            Config.parse(bad)
    with pytest.raises(ValueError, match="need --database postgres"):
        Config.parse("sqlite-3")
    args = _parse_args(["--database", "postgres", "--nodes", "3"])
    assert args.config_list == [Config("postgres", 3, True)]
    assert _parse_args(["--fleet"]).scenarios == "chat-c1,chat-c32,stream-c16,xcashu-c8"


@pytest.mark.parametrize(
    "argv",
    [["--nodes", "2"], ["--fleet", "--nodes", "2"], ["--fleet", "--configs", "sqlite-2"]],
)
def test_bad_command_lines_exit_with_a_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _parse_args(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--database postgres" in err or "--configs" in err


def test_wrk_takes_the_keys_in_turn() -> None:
    one = _script("POST", b"{}", {"Authorization": "Bearer sk-a"}, ["Bearer sk-a"])
    assert "function request()" not in one  # one key: wrk builds the request once
    two = _script("POST", b"{}", {"Authorization": "Bearer sk-a"}, ["Bearer sk-a", "Bearer sk-b"])
    assert 'local auths = {"Bearer sk-a", "Bearer sk-b"}' in two
    assert "function request()" in two and "turn % #auths + 1" in two


def test_balancer_config_passes_nginx_t(tmp_path: Path) -> None:
    urls = ["http://127.0.0.1:40001", "http://127.0.0.1:40002"]
    conf = render_balancer_config(tmp_path, 40000, urls)
    assert "server 127.0.0.1:40001 " in conf and "server 127.0.0.1:40002 " in conf
    assert "proxy_buffering off;" in conf and "access_log off;" in conf
    assert "listen 127.0.0.1:40000 " in conf
    binary = nginx_binary()
    assert binary, "nginx is missing: `make test-tools` installs nginx-light"
    (tmp_path / "tmp").mkdir()
    (tmp_path / "nginx.conf").write_text(conf)
    checked = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


def test_fleet_table_compares_with_one_postgres_node_and_sqlite() -> None:
    scenario = Scenario.parse("chat-c32")

    def result(config: str, rps: float, served: list[int]) -> FleetResult:
        node = RunResult("node", scenario, elapsed_s=1.0, wrk_ok=int(rps))
        node.wrk_quantiles_ms = {0.5: 10.0, 0.99: 30.0}
        row = Row(scenario, RunResult("upstream", scenario), node, {"ok": True})
        row.served_by_node = served
        return FleetResult(Config.parse(config), [[row]])

    text = fleet_table(
        [
            result("sqlite-1", 1000, [1000]),
            result("postgres-1", 200, [200]),
            result("postgres-2", 300, [150, 150]),
        ],
        ["chat-c32"],
    )
    line = next(x for x in text.splitlines() if x.startswith("2 PG + LB"))
    # 300 req/s: 1.50 x one Postgres node, 0.30 x one SQLite node; who served what
    assert line.split()[5:] == [
        "300.0",
        "10.00",
        "30.00",
        "0",
        "OK",
        "1.50",
        "0.30",
        "150",
        "/",
        "150",
    ]


def test_two_nodes_on_postgres_share_the_load_and_the_money_is_exact(tmp_path: Path) -> None:
    assert postgres_bin_dir(), "no Postgres server: `make test-tools` installs postgresql"
    assert nginx_binary() and shutil.which("wrk"), "`make bench-tools` installs nginx and wrk"
    results = tmp_path / "results.jsonl"
    argv = [
        "--fleet",
        "--configs",
        "postgres-2",
        "--scenarios",
        "chat-c1",
        "--quick",
        "--keys",
        "2",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *argv, "--results", str(results)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=RUN_WITHIN_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert (record["database"], record["nodes"], record["balancer"]) == ("postgres", 2, True)
    assert record["keys"] == 2
    assert record["scenario"] == "chat-c1" and "fleet" in record
    check = record["charge_check"]
    assert check["ok"] and check["reserved_after_msat"] == 0
    assert check["spent_msat"] == check["charged_requests"] * check["price_msat"] > 0
    served = record["served_by_node"]
    # both keys paid (their figures summed), each for half of the requests, give or take
    # what wrk left in flight
    per_key = check["charged_per_key"]
    assert len(per_key) == 2 and min(per_key) > 0 and sum(per_key) == check["charged_requests"]
    # round robin: both nodes answered, and between them every request the keys paid for
    assert len(served) == 2 and min(served) > 0, served
    assert sum(served) == check["charged_requests"]
    assert len(record["node_rss_mb"]) == 2  # both nodes' memory
    assert "2 PG + LB" in done.stdout and "fleet comparison" in done.stdout
