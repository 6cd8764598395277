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
