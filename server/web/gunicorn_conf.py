"""gunicorn settings for the encrypted inference server.

One worker process per core: SEAL's evaluator is CPU bound and holds the GIL through its
Python binding, so compute does not run in parallel inside a worker. The workers are
threaded all the same (gthread, 4 threads) so that a client that stalls while sending
occupies one thread, not the whole worker, and never makes the master kill it for a missed
heartbeat. Values come from HESERVE_* environment variables set by `heserve-server`.
"""

import os

from heserve.server.service.config import ServerConfig

_config = ServerConfig.from_env()  # the same defaults and HESERVE_* parsing as the application

bind = f"{_config.host}:{_config.port}"
workers = _config.effective_workers()
worker_class = "gthread"
threads = int(os.environ.get("HESERVE_THREADS", "4"))
timeout = _config.timeout_seconds
graceful_timeout = 20
keepalive = 5
# Recycle workers now and then so a slow leak in native code cannot grow without bound.
max_requests = 20000
max_requests_jitter = 2000
limit_request_line = 4094
limit_request_fields = 50
# Access logging costs ~10% of a single-sample request's time in the worker: opt-in.
access_log_on = os.environ.get("HESERVE_ACCESS_LOG", "").lower() in ("1", "true", "yes", "on")
accesslog = "-" if access_log_on else None
errorlog = "-"
loglevel = _config.log_level
# Request line, status, size and duration only: no bodies, no query strings.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
proc_name = "heserve"
# Every line on stderr is one JSON object: gunicorn's own, the server's, and the audit trail.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "heserve.server.web.audit.JSONLineFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        # With a logconfig_dict gunicorn writes access lines whatever `accesslog` says: silence the logger.
        "gunicorn.access": {
            "level": "INFO" if access_log_on else "CRITICAL",
            "handlers": ["stderr"],
            "propagate": False,
        },
    },
}
control_socket_disable = True  # several instances may share a machine
# The heartbeat touches a file in this directory on every turn of a worker's event loop: on
# tmpfs that is a memory write, on an overlay or disk filesystem ~5 % of a linear request.
worker_tmp_dir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def post_request(worker, req, environ, resp):
    """Replace a worker whose resident memory passed the ceiling, once its requests are answered.

    SEAL allocates from a per-process memory pool that it never returns to the system, and
    glibc keeps freed arenas: a worker's RSS is its high-water mark. Recycling past a ceiling
    bounds it whatever the mix of requests was.
    """
    ceiling = _config.max_worker_rss_bytes
    if ceiling and worker.alive and _resident_bytes() > ceiling:
        worker.log.info("worker %s above %d bytes resident: replacing it", worker.pid, ceiling)
        worker.alive = False


def on_reload(server):
    """SIGHUP: new workers start with the models directory as it is now (new versions, repaired or
    removed artifacts; models an operator unloaded stay unloaded) and the old ones finish their
    requests first."""
    server.log.info("SIGHUP: reloading; new workers load the models directory afresh, old workers finish first")


def on_exit(server):
    """Remove the metrics and run directories `heserve-server` made for this master (an operator's are kept)."""
    import shutil

    for variable, owned in (
        ("PROMETHEUS_MULTIPROC_DIR", "HESERVE_METRICS_DIR_OWNED"),
        ("HESERVE_RUN_DIR", "HESERVE_RUN_DIR_OWNED"),
    ):
        directory = os.environ.get(variable)
        if directory and os.environ.get(owned) == "1":
            shutil.rmtree(directory, ignore_errors=True)


def child_exit(server, worker):
    """A dead worker's live gauges must not linger in the shared metrics directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
