"""The HAProxy wrapper `quantserve serve --haproxy` installs on a loopback host (serving/haproxy_loopback.py): the
config HAProxy gets has no bind on every interface, and Ray's arguments reach the real binary otherwise unchanged."""

import os
import stat
import subprocess

from serving.haproxy_loopback import loopback_binds, loopback_haproxy_env

# The bind lines Ray Serve 2.60's template writes (ray/serve/_private/haproxy_templates.py), and two that name an
# address (the HTTP frontend on http_options.host, a server line).
RAY_CONFIG = """frontend prometheus
    bind :9101
frontend http_frontend
    bind 127.0.0.1:8000
backend b
    server s1 127.0.0.1:30001 check
listen stats
  bind *:8404
  stats enable
frontend v6
    bind [::]:9000 proto h2
    bind 0.0.0.0:9001
"""


def test_every_wildcard_bind_goes_to_loopback_and_named_addresses_stay():
    rewritten = loopback_binds(RAY_CONFIG)
    binds = [line.split()[1] for line in rewritten.splitlines() if line.strip().startswith("bind ")]
    assert binds == ["127.0.0.1:9101", "127.0.0.1:8000", "127.0.0.1:8404", "127.0.0.1:9000", "127.0.0.1:9001"]
    assert "bind 127.0.0.1:9000 proto h2" in rewritten and "server s1 127.0.0.1:30001 check" in rewritten


def test_the_wrapper_runs_the_real_binary_on_a_loopback_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/bin/echo")  # stands in for HAProxy: prints its arguments
    env = loopback_haproxy_env(tmp_path / "haproxy")
    assert stat.S_IMODE((tmp_path / "haproxy").stat().st_mode) == 0o700
    assert all(env[k].startswith(str(tmp_path)) for k in env if k.endswith(("_PATH", "_LOC", "_BASE", "_FILE")))
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] != env["RAY_SERVE_HAPROXY_METRICS_PORT"]
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_CONFIG)
    done = subprocess.run([env["RAY_SERVE_HAPROXY_BINARY_PATH"], "-db", "-f", str(config), "-sf", "123"],
                          capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": ""})
    assert done.stdout.split() == ["-db", "-f", f"{config}.loopback", "-sf", "123"]
    assert (tmp_path / "haproxy.cfg.loopback").read_text() == loopback_binds(RAY_CONFIG)
    assert config.read_text() == RAY_CONFIG  # Ray's own file is left as Ray wrote it
