"""The HTTP API: one router per resource, each with its prefix and tags.

========================  =============================  =========
module                    paths                          tags
========================  =============================  =========
console.py                / (the web console)            console
stats.py                  GET /v1/stats                  models
health.py                 /healthz, /readyz              health
metrics.py                /metrics                       (not in the schema)
models.py                 GET /v1/models                 models
classify.py               POST /v1/classify              inference
detect.py                 POST /v1/detect                inference
admin.py                  POST /v1/models/{name}/...     admin
v2.py                     /v2/... (Open Inference        v2
                          Protocol: KServe, Triton)
========================  =============================  =========

A new route is a module here with its own ``router``, listed in `ROUTERS`.
"""

from __future__ import annotations

from fastapi import APIRouter

from service.routes import admin, classify, console, detect, health, metrics, models, stats, v2

# In this order in the OpenAPI schema.
ROUTERS: tuple[APIRouter, ...] = (console.router, health.router, models.router, stats.router,
                                  metrics.router,
                                  classify.router, detect.router, admin.router, v2.router)
