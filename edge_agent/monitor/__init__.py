"""Monitoring on the agent: observers fed from inference (and the online learner) through a bounded,
non-blocking queue; data drift against a reference data set (Evidently) and on the error stream (River);
ME/MAE/MAPE/bias; Prometheus metrics on loopback; summaries and drift events to the controller.

Modules: ``observer`` (the queue and the producer hooks), ``metrics`` (error statistics, the Prometheus
registry), ``drift`` (detectors), ``reference`` (verified reference sets), ``service`` (the engine and the
agent service). Needs the ``monitor`` extra (prometheus-client, evidently, river).
"""
