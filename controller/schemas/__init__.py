"""Request and response bodies of the controller's REST API, pydantic only (no FastAPI, no SQL).

The route modules (``controller.api``) and the SDK (``controller.client``) import the same classes, so the
SDK returns the documents the routes declare. One module per resource; the registry's bodies (datasets,
models, versions, provenance) live in ``controller.registry.schemas`` and the device-facing documents
(enrollment, status reports, telemetry posts) in ``fedge_protocol``.
"""
