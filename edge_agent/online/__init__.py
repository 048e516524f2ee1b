"""Online learning on the agent: learners fed from sensor topics and the local API (see docs/online.md).

``OnlineLearner`` (learner.py) runs a use-case transformer (transformers.py) and an incremental backend
(backends.py: River, scikit-learn ``partial_fit``; PyTorch in ``edge_agent.learning.online_torch``),
prequentially, saving a new local version only when the held-out loss improves (store.py).
``OnlineService`` (service.py) hosts the learners in the agent process with their MQTT feeds;
``OnlineRoutes`` (routes.py) serves them on the local API.
"""
