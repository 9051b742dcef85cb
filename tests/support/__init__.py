"""What the tests share and are not tests themselves.

- :mod:`tests.support.daemon`: the real ``turnstore serve`` in a subprocess, and
  :class:`~tests.support.daemon.DaemonStarter`, the one way a test starts daemons
  of its own on either backend (the ``start_daemon`` fixture).
- :mod:`tests.support.postgres`: a real PostgreSQL cluster, fresh databases on it,
  and the options that put a daemon on one.
- :mod:`tests.support.eventually`: waiting for a condition with a deadline
  (never a bare ``sleep`` standing in for synchronisation).
- :mod:`tests.support.sse_client`: a Server-Sent Events reader that parses as
  browsers do.
- :mod:`tests.support.commands`: running the other languages' tools.
- :mod:`tests.support.browser`: headless Chromium (installed when missing)
  under Playwright, for the browser and inspector tests.
- :mod:`tests.support.hostile`: the hostile-wire machinery (raw HTTP/2, outcome
  predictions, hypothesis strategies).
- :mod:`tests.support.soak`: the crash loops run for longer (``make soak``).
"""
