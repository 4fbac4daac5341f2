"""rsclip as a service (``rsclip api``): one HTTP API over the library for search, labels, detections, tile
previews and table info, and the table's labels and detections as OGC API - Features collections that GDAL and
QGIS open live.

The rooms: :mod:`~rsclip.app.api.settings` (what a service serves and its limits), :mod:`~rsclip.app.api.guards`
(token, body, slots, errors as HTTP answers), :mod:`~rsclip.app.api.calls` (JSON requests to library calls),
:mod:`~rsclip.app.api.features` (OGC API - Features), :mod:`~rsclip.app.api.openapi` (the OpenAPI
description), :mod:`~rsclip.app.api.service` (routes, the ASGI app and its server) and
:mod:`~rsclip.app.api.client` (what the command line uses to ask a running service; standard library only).
This module imports nothing, so the client stays light.
"""
