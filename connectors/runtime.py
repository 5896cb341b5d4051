"""What every flow process does before it builds its graph: logging, settings, clean stop on SIGTERM, metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable

from bytewax.dataflow import Dataflow

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


def flow_attribute(flow: str, build: Callable[[Settings], Dataflow]) -> Callable[[str], Dataflow]:
    """A module `__getattr__` that builds `flow` from the settings once, when `python -m bytewax.run` asks.

    Lazy, so tests import `build_flow` with no environment and no servers.
    """
    built: list[Dataflow] = []

    def getattr_(name: str) -> Dataflow:
        if name != "flow":
            raise AttributeError(name)
        if not built:
            built.append(build(start_process(flow)))
        return built[0]

    return getattr_
