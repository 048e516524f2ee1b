"""Controller observability: Prometheus metrics (:mod:`controller.observability.metrics`)."""
