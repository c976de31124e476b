"""The HTTP layer: the Flask application factory, routes, authentication, audit, metrics,
OpenAPI and gunicorn settings. Errors are mapped to HTTP statuses here, in errors.py only."""
