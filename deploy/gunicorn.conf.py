"""gunicorn settings for one heserve instance behind nginx (or a Kubernetes Service).

    heserve-server --gunicorn-config deploy/gunicorn.conf.py --key-store redis --port 8001

It starts from the built-in settings (server/gunicorn_conf.py: one worker process per core,
gthread with HESERVE_THREADS threads, JSON logs, Prometheus multiprocess clean-up) and
changes only what differs behind a proxy. Values still come from HESERVE_* variables.
"""

import os

from heserve.server.web.gunicorn_conf import *  # noqa: F403 - the built-in settings are the base

# nginx keeps idle upstream connections for 4 s (keepalive_timeout in deploy/nginx/heserve.conf);
# gunicorn must keep them longer, or nginx may send a request on a connection gunicorn is closing.
keepalive = 10

# Client addresses in the access log come from nginx's X-Forwarded-For, trusted from these only.
forwarded_allow_ips = os.environ.get("HESERVE_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Inherited unchanged: timeout (HESERVE_TIMEOUT_SECONDS, below nginx's proxy_read_timeout of
# 75 s) and graceful_timeout (20 s; a unit's stop timeout or Kubernetes' grace period exceeds it).
