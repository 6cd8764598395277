"""``chatapp-cli``: a terminal client for a chatapp server (REST ``/api/v1`` and websocket ``/ws``).

Modules: ``api`` (HTTP client and errors), ``stream`` (websocket reply streaming with resume),
``output`` (formatting), ``batch`` (the ``batch`` command), ``interactive`` (the ``chat`` loop) and
``cli`` (argument parsing and the entry point ``main``).
"""
