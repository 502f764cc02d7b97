"""neo-exporter: a Prometheus exporter for ProjectDiscovery Neo task usage."""

from __future__ import annotations

__version__ = "0.1.0"
