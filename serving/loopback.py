"""Keep Ray Serve's replica-to-replica gRPC server on loopback when the Ray node itself is on loopback.

Ray Serve 2.60 starts an inter-deployment gRPC server in every replica (handles use it in the throughput-optimized
data plane) and binds it to `[::]:0`, every interface, with no setting to change that
(ray/serve/_private/replica.py, `_on_initialized`). `quantserve serve` runs the node on 127.0.0.1, where nothing
else may listen beyond loopback, so each quantserve deployment calls `keep_serve_grpc_on_loopback()` in its
constructor, which runs before that server starts. On a cluster node (a Kubernetes pod) the node address is not
loopback and nothing changes. tests/test_security.py checks the listeners of the running application.
"""

from __future__ import annotations

LOOPBACK = "127.0.0.1"


def keep_serve_grpc_on_loopback() -> None:
    import ray
    from ray.serve._private import replica

    if ray.util.get_node_ip_address() != LOOPBACK or getattr(replica.add_port_to_grpc_server, "loopback", False):
        return
    bind = replica.add_port_to_grpc_server

    def bind_on_loopback(server, address: str):
        return bind(server, address.replace("[::]", LOOPBACK, 1))

    bind_on_loopback.loopback = True
    replica.add_port_to_grpc_server = bind_on_loopback
