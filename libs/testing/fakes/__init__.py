"""Fake venue servers on 127.0.0.1 that follow ``PROTOCOLS.md``, for tests.

- :mod:`.polygon_rest`: :class:`FakePolygonRest`, the REST aggregates endpoint
  (``next_url`` paging, Bearer / ``apiKey`` auth, error shapes).
- :mod:`.polygon_ws`: :class:`FakePolygonWs`, the WebSocket feed (connected and
  auth frames, per-channel acks, batched arrays, scripted faults).
- :mod:`.polygon_data`: minute bars in both wire shapes.
"""
