"""What Ray Serve tells the router about variants: the exceptions that mean no replica answered a call, and each
deployment's status. serving.dispatch decides with them and stays free of Ray (its unit tests run without it)."""

from __future__ import annotations

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from serving.dispatch import ReplicaFailures

SERVE_FAILURES = ReplicaFailures(
    gone=(RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError),
    busy=(BackPressureError,))


def serve_deployments(app_name: str) -> dict:
    """Deployment name -> Serve's DeploymentStatusOverview for the application (blocking: call it in a thread)."""
    application = serve.status().applications.get(app_name)
    return dict(application.deployments) if application is not None else {}
