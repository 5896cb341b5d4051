"""What every flow process does before it builds its graph: logging, settings, clean stop on SIGTERM, metrics."""

from __future__ import annotations

import logging

from connectors import metrics
from connectors.jetstream import stop_on_sigterm
from connectors.settings import Settings, load_settings


def start_process(flow: str) -> Settings:
    """Prepare this process to run `flow`; start-up logs only the non-secret settings."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    stop_on_sigterm()
    metrics.serve(settings.tuning.metrics_port)
    logging.getLogger(f"dataflows.{flow}").info("%s starting: %s", flow, settings.describe())
    return settings
