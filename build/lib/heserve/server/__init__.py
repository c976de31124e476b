"""Encrypted inference server: Open Inference Protocol over CKKS ciphertexts."""

__version__ = "0.1.0"


def create_app(config=None):
    """Build the Flask application (see server.app.create_app)."""
    from heserve.server.web.app import create_app as _create_app

    return _create_app(config)
