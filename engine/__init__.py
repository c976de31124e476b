"""The CKKS engine: parameters, SEAL I/O, packing and the compiled plans of linear models and
networks. It knows nothing of HTTP; the SDK uses its SEAL I/O and packing, the server its plans."""
