"""The service layer: inference, evaluation keys, quotas and the privacy report, in plain
functions and classes. It imports no Flask: the HTTP layer (heserve.server.web) calls it."""
