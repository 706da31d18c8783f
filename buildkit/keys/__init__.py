"""Signing keys: one signer interface for a key file or a key held in a PKCS#11 token."""
