"""gunicorn settings for the ``web`` process (``gunicorn -c gunicorn.conf.py wsgi:app``).

gevent, because every websocket holds its handler for its whole life: one gevent process held
1000 sockets at ~105 MB here, while gthread hung at its thread count (docs/deploy.md).
"""
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gevent"
worker_connections = int(os.environ.get("CHATAPP_WORKER_CONNECTIONS", "1000"))
# Keep idle HTTP connections longer than the platform routers do (Heroku 55 s, Render ~60 s).
keepalive = 75
# Heroku sends SIGKILL 30 s after SIGTERM; finish requests within that.
graceful_timeout = 25
timeout = 60
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss'
forwarded_allow_ips = "*"  # Heroku and Render terminate TLS in front of us


def post_worker_init(worker):  # noqa: ANN001 - gunicorn's hook signature
    """On SIGTERM (every deploy and daily restart), tell each websocket to reconnect (close 1012)
    at once instead of holding it for the graceful timeout: clients resume on another process."""
    import signal

    import gevent

    stop_accepting = worker.handle_exit
    ext = getattr(worker.wsgi, "extensions", {}).get("chatapp")

    def handle_exit(sig, frame):  # noqa: ANN001
        stop_accepting(sig, frame)
        if ext is not None:
            # not inside the signal handler itself: let the hub run it next
            gevent.get_hub().loop.run_callback(ext.sockets.restart_all)

    signal.signal(signal.SIGTERM, handle_exit)
