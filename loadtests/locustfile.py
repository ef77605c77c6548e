"""Locust scenario for a gateway under load with a web UI (locust is not a dependency).

    pip install locust
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

Settings come from the environment: GATEWATCH_MODEL (default ``churn``), GATEWATCH_FEATURES
(20), GATEWATCH_ROWS (rows per request, 1) and GATEWATCH_USER_HEADER (set it to the model's
`sticky_header` to send a per-user key, so sticky canary routing is exercised). Users send
mostly Open Inference Protocol requests, some V1 `instances` requests and some feedback for
requests they made. For figures to compare, use `python -m loadtests.bench`: locust's Python
client saturates long before a gateway does.
"""

from __future__ import annotations

import os
import random
import uuid
from typing import Any

from locust import FastHttpUser, between, task

MODEL = os.environ.get("GATEWATCH_MODEL", "churn")
FEATURES = int(os.environ.get("GATEWATCH_FEATURES", "20"))
ROWS = int(os.environ.get("GATEWATCH_ROWS", "1"))
USER_HEADER = os.environ.get("GATEWATCH_USER_HEADER")


def _rows() -> list[list[float]]:
    return [[round(random.gauss(0.0, 1.0), 6) for _ in range(FEATURES)] for _ in range(ROWS)]


class GatewayUser(FastHttpUser):  # type: ignore[misc]
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.user_id = uuid.uuid4().hex[:12]
        self.answered: list[str] = []

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if USER_HEADER:
            headers[USER_HEADER] = self.user_id
        return headers

    @task(8)  # type: ignore[untyped-decorator]
    def infer_v2(self) -> None:
        rows = _rows()
        body: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [len(rows), FEATURES],
                    "datatype": "FP64",
                    "data": [v for row in rows for v in row],
                }
            ],
        }
        with self.client.post(
            f"/v2/models/{MODEL}/infer",
            json=body,
            headers=self._headers(),
            name="/v2/models/[model]/infer",
            catch_response=True,
        ) as answer:
            if answer.status_code != 200:
                answer.failure(f"{answer.status_code}: {answer.text[:200]}")
                return
            self.answered = [*self.answered[-99:], body["id"]]

    @task(1)  # type: ignore[untyped-decorator]
    def predict_v1(self) -> None:
        self.client.post(
            f"/v1/models/{MODEL}:predict",
            json={"instances": _rows()},
            headers=self._headers(),
            name="/v1/models/[model]:predict",
        )

    @task(1)  # type: ignore[untyped-decorator]
    def feedback(self) -> None:
        if not self.answered:
            return
        request_id = random.choice(self.answered)
        self.client.post(
            "/v1/feedback",
            json={"request_id": request_id, "label": random.randint(0, 1)},
            name="/v1/feedback",
        )
