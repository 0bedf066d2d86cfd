"""ASGI entry point for uvicorn workers (``cds serve`` sets the environment it reads)."""

from __future__ import annotations

import os

from cds.api.app import create_app
from cds.settings import load_settings

app = create_app(
    load_settings(),
    watch=os.environ.get("CDSSERVE_WATCH") == "1",
    workers=int(os.environ.get("CDSSERVE_WORKERS", "1")),
)
