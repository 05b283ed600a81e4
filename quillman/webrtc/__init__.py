"""WebRTC calls: the Realtime API's browser transport (``POST /v1/realtime/calls``).

One call = one aiortc peer connection in front of one
:class:`~quillman.pipeline.session.RealtimeSession`: the caller's Opus track is decoded into the
session's input (:mod:`.media`), the reply audio is paced onto a track back (:mod:`.media`,
:mod:`quillman.pipeline.playback`), the ``oai-events`` data channel carries the other events
(:mod:`.channel`). :mod:`.signalling` reads the offer, :mod:`.network` decides which addresses and
ports ICE offers, :mod:`.call` owns a call's lifetime. :mod:`.caller` is a Python client (tests,
benchmarks).
"""
