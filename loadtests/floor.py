"""The bare floor: the least a Python server can do to answer the benchmark's requests.

One Starlette route, orjson in and out, `predict_proba` called inline on the event loop, no
validation, logging, routing or metrics. gatewatch is measured against it: whatever gatewatch
costs above this is the price of what it does on top.

    python -m loadtests.floor --model model.joblib --port 8000 [--thread]

``--thread`` runs `predict_proba` in the default thread pool instead (the figure that shows
what a thread hop costs for a cheap model).
"""

from __future__ import annotations

import argparse
from typing import Any

import joblib
import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["create_floor_app", "main"]


def create_floor_app(model: Any, *, thread: bool = False) -> Starlette:
    """A one-route app answering OIP V2 bodies of one `input-0` tensor with `model`."""
    proba_of = model.predict_proba
    classes = model.classes_

    async def infer(request: Request) -> Response:
        body = orjson.loads(await request.body())
        tensor = body["inputs"][0]
        X = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        proba = await run_in_threadpool(proba_of, X) if thread else proba_of(X)
        labels = classes[proba.argmax(axis=1)]
        answer = {
            "model_name": "churn",
            "id": body.get("id", ""),
            "outputs": [
                {"name": "predict", "shape": [len(labels)], "datatype": "INT64", "data": labels},
                {
                    "name": "predict_proba",
                    "shape": list(proba.shape),
                    "datatype": "FP64",
                    "data": proba.ravel(),
                },
            ],
        }
        content = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(content, media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    return Starlette(
        routes=[
            Route("/v2/models/churn/infer", infer, methods=["POST"]),
            Route("/v2/health/ready", ready, methods=["GET"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a joblib scikit-learn classifier")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--thread", action="store_true", help="predict in the thread pool")
    args = parser.parse_args()
    app = create_floor_app(joblib.load(args.model), thread=args.thread)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
