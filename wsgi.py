"""WSGI entry point for gunicorn (``gunicorn -c gunicorn.conf.py wsgi:app``) and the flask CLI."""
from chatapp.app import create_app

app = create_app()
