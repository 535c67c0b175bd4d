"""gunicorn settings for the web container (gunicorn reads ./gunicorn.conf.py by itself).

GUNICORN_CMD_ARGS overrides any of them, e.g. "--bind 127.0.0.1:9000 --workers 2" or, to
serve TLS without a proxy, "--certfile cert.pem --keyfile key.pem".
"""

bind = "0.0.0.0:8000"
worker_class = "gthread"
workers = 4
threads = 4
# The app and its URLconf load once, before the workers fork.
preload_app = True
accesslog = "-"
# gunicorn 27 opens a control socket under ~/.gunicorn by default; nothing here uses it
# (the container is restarted, not steered), so no socket is opened.
control_socket_disable = True
