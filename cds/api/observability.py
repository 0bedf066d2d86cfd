"""Structured JSON logs and Prometheus metrics (no PHI beyond references, never tokens)."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess

LOG_FIELDS = (
    "request_id", "service", "hook", "status", "duration_ms", "cards", "client", "tenant", "outcome",
    "packs", "path", "method", "detail",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for f in LOG_FIELDS:
            v = getattr(record, f, None)
            if v is not None:
                out[f] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str) -> None:
    root = logging.getLogger("cds")
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(JsonFormatter())
        root.addHandler(h)
        root.propagate = False
    root.setLevel(level.upper())


class Metrics:
    """Per-app metrics registry (explicit state; multiprocess-aware for several workers)."""

    def __init__(self) -> None:
        self.multiproc = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        reg = None if self.multiproc else self.registry
        kw: dict[str, Any] = {"registry": reg}  # None: not registered globally (multiprocess files)
        self.requests = Counter("cds_requests_total", "CDS Hooks calls", ["service", "hook", "status"], **kw)
        self.latency = Histogram(
            "cds_request_duration_seconds",
            "Service call latency",
            ["service", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            **kw,
        )
        self.cards = Counter("cds_cards_total", "Cards returned", ["service", "rule", "indicator"], **kw)
        self.fhir = Counter("cds_fhir_fetches_total", "Prefetch keys by how they were satisfied", ["status"], **kw)
        self.feedback = Counter("cds_feedback_total", "Feedback items received", ["service", "outcome"], **kw)
        self.reloads = Counter("cds_pack_reloads_total", "Rule-set reloads", ["result"], **kw)

    def render(self) -> bytes:
        if self.multiproc:
            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return generate_latest(reg)
        return generate_latest(self.registry)
