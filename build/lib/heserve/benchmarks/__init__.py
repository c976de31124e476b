"""Benchmarks of encrypted against plaintext inference and against TenSEAL's naive API."""
