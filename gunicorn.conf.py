"""gunicorn settings for the ``web`` process (``gunicorn -c gunicorn.conf.py wsgi:app``).

gevent, because every websocket holds its handler for its whole life: one gevent process held
1000 sockets at ~105 MB here, while gthread hung at its thread count (docs/deploy.md).
"""
import glob
import os
import shutil
import tempfile

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

# Prometheus (GET /metrics): each gunicorn worker writes its metrics to files in this directory and
# whichever worker answers a scrape adds them all up (prometheus_client's multiprocess mode). It
# must be set before the workers fork and import the app: a fresh temporary directory per master
# unless the operator sets one (an environment variable, so a reload on SIGHUP keeps it).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["_CHATAPP_PROMETHEUS_TMPDIR"] = tempfile.mkdtemp(
        prefix="chatapp-prometheus-")


def on_starting(server):  # noqa: ANN001 - gunicorn's hook signature
    """An operator's directory may hold a previous run's files: counts start from zero."""
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(path)


def child_exit(server, worker):  # noqa: ANN001
    """A worker exited: its live gauges (open websockets) stop counting; its counters stay."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # noqa: ANN001
    own = os.environ.get("_CHATAPP_PROMETHEUS_TMPDIR")
    if own:
        shutil.rmtree(own, ignore_errors=True)


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
