"""`quantserve loadtest` against the real application on a loopback port (the `serving_app` fixture),
with real Locust processes: a short, bounded sweep over two variants, and the faults a user meets."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import httpx
import pytest

from loadtest.report import FILES
from quantserve.config import load_config
from serving.launcher import free_port
from tests.helpers import REPO, run_quantserve

CONFIG = load_config(REPO / "quantserve.yaml")
CHAT_MODEL = next(model.name for model in CONFIG.models if model.kind == "chat")
EMBEDDING_MODELS = [model.name for model in CONFIG.models if model.kind == "embedding"]


@pytest.fixture(scope="module")
def app_url(serving_app) -> str:
    return serving_app


@pytest.fixture(scope="module")
def served_ids(app_url) -> list[str]:
    return [item["id"] for item in httpx.get(f"{app_url}/v1/models", timeout=30).json()["data"]]


@pytest.fixture(scope="module")
def two_variants(app_url) -> list[str]:
    """Two variants of the chat model that have a live replica (the test config leaves some without)."""
    ready = httpx.get(f"{app_url}/ready", timeout=30).json()["variants"]
    variants = sorted(v.split(":", 1)[1] for v, live in ready.items() if live and v.startswith(f"{CHAT_MODEL}:"))
    assert len(variants) >= 2, f"fewer than two live variants of {CHAT_MODEL}: {ready}"
    return variants[:2]


def quantserve(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_quantserve("loadtest", *args, timeout=timeout)


@pytest.mark.slow
def test_short_sweep_over_two_variants_writes_a_report_that_agrees(app_url, two_variants, tmp_path):
    done = quantserve("run", "--target", app_url, "--model", CHAT_MODEL, "--variants", ",".join(two_variants),
                      "--users", "2", "--warmup", "1s", "--duration", "5s", "--max-requests", "80",
                      "--max-tokens", "8", "--slo-ttft-ms", "5000", "--slo-itl-ms", "1000",
                      "--reports-dir", str(tmp_path), "--run-id", "e2e")
    assert done.returncode == 0, done.stderr + done.stdout
    folder = tmp_path / "e2e"
    assert all((folder / name).stat().st_size > 0 for name in FILES)
    results = json.loads((folder / "results.json").read_text())
    with (folder / "requests.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert results["status"] == "complete" and len(rows) == results["totals"]["requests"] <= 2 * 80
    assert results["totals"]["errors"] == sum(row["ok"] != "True" for row in rows) == 0, results["errors"]
    _check_summaries_follow_records(results, rows, two_variants)
    assert all(row["variant"] and row["usage_checked"] == "True" for row in rows)
    markdown = (folder / "report.md").read_text()
    assert all(f"| {variant} | 2 users |" in markdown for variant in two_variants)


def _check_summaries_follow_records(results: dict, rows: list[dict], variants: list[str]) -> None:
    measured = [row for row in rows if row["phase"] == "measure" and row["ok"] == "True"]
    for name in ("prompt_tokens", "output_tokens", "total_tokens"):
        assert results["totals"][name] == sum(int(row[name]) for row in measured) > 0
    assert sorted(s["label"] for s in results["summaries"]) == variants
    for s in results["summaries"]:
        mine = [row for row in measured if row["run_label"] == s["label"]]
        assert s["output_tokens"] == sum(int(row["output_tokens"]) for row in mine)
        assert s["output_tokens_per_s"] == pytest.approx(s["output_tokens"] / s["window_s"])
        expected = s["usd_per_hour"] / (s["output_tokens_per_s"] * 3600) * 1e6
        assert s["usd_per_m_output_tokens"] == pytest.approx(expected)
        assert s["ttft_ms"]["p50"] > 0 and s["e2e_ms"]["p90"] >= s["ttft_ms"]["p50"]


@pytest.mark.slow
def test_locustfile_runs_as_locust_users_expect(app_url, two_variants, served_ids, tmp_path):
    embedding = [name for name in EMBEDDING_MODELS if name in served_ids][:1]
    extra = ["--embedding-model", embedding[0]] if embedding else []
    command = [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless", "-u", "2", "-r", "2",
               "-t", "5s", "--stop-timeout", "30", "--host", app_url, "--model", f"{CHAT_MODEL}:{two_variants[0]}",
               "--max-tokens", "4", "--max-requests", "400", "--json-file", str(tmp_path / "stats"), "--only-summary",
               *extra]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    entries = json.loads((tmp_path / "stats.json").read_text())
    stats = {(entry["method"], entry["name"].split()[0]): entry for entry in entries}
    chat = f"{CHAT_MODEL}:{two_variants[0]}"
    for key in [("POST", "chat"), ("TTFT", chat), ("ITL", chat), ("E2E", chat), ("SLO", chat)]:
        assert stats[key]["num_requests"] > 0, key
    if embedding:
        assert stats[("POST", "embeddings")]["num_requests"] > 0
    assert all(entry["num_failures"] == 0 for entry in entries)


@pytest.mark.slow
def test_unknown_model_shows_the_servers_error(app_url, tmp_path):
    done = quantserve("run", "--target", app_url, "--model", f"{CHAT_MODEL}:no-such-variant", "--users", "1",
                      "--duration", "2s", "--reports-dir", str(tmp_path))
    assert done.returncode == 2
    assert f"the server refused '{CHAT_MODEL}:no-such-variant': HTTP 4" in done.stderr


def test_target_down_is_one_clear_message(tmp_path):
    done = quantserve("run", "--target", f"http://127.0.0.1:{free_port()}", "--model", CHAT_MODEL,
                      "--reports-dir", str(tmp_path), timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "cannot reach" in done.stderr and "is the server running" in done.stderr


def test_non_loopback_target_is_refused_before_any_request(tmp_path):
    done = quantserve("run", "--target", "http://192.0.2.1:8000", "--model", CHAT_MODEL, timeout=60)
    assert done.returncode == 2 and "not loopback" in done.stderr and "--allow-remote-target" in done.stderr
