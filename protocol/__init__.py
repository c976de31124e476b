"""The wire format: Open Inference Protocol V2 messages and ciphertext bindings.

Shared by the SDK and the server; it imports numpy only.
"""
