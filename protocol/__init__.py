"""Wire format and CKKS parameter rules shared by the client SDK and the server.

Both sides import this package; it depends on numpy and tenseal only.
"""
