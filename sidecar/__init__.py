"""gatewatch sidecar: watches the prediction log for drift, accuracy and rollouts."""

__all__: list[str] = []
