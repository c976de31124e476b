"""heserve: encrypted inference over CKKS. The packages, lowest layer first:

- heserve.protocol: the wire format (Open Inference Protocol V2 messages, ciphertext bindings);
- heserve.engine: CKKS parameters, SEAL I/O, packing and the compiled plans (no HTTP);
- heserve.server.service: inference, keys, quotas, privacy report (no Flask);
- heserve.server.web: the Flask application, routes, auth, audit, metrics, gunicorn settings;
- heserve.client: the SDK and the `heserve` command line;
- heserve.models: shipped model artifacts, their recipes and the torch/scikit-learn exporters.
"""

__version__ = "0.1.0"
