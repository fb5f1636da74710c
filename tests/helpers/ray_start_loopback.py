"""`ray start` for a worker node on 127.0.0.1, for the multi-node test: `python -m tests.helpers.ray_start_loopback
start --address=127.0.0.1:PORT --node-ip-address=127.0.0.1 ...`.

Ray 2.60 replaces 127.0.0.1 (in --node-ip-address and --address) by the machine's routable address on a node that may
join a cluster (services.resolve_ip_for_localhost), and the loopback alternative, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
makes `ray start` refuse to start a worker node. A pod has a routable address and never meets either. This runs Ray's
own CLI with that one replacement turned off, so that a worker node listens on loopback like the head.
"""

from __future__ import annotations

import sys

from ray._private import services
from ray.scripts.scripts import main


def keep_host(host: str) -> str:
    return host


if __name__ == "__main__":
    services.resolve_ip_for_localhost = keep_host
    sys.exit(main())
