"""Remote attestation: the report format, the verifier service and its store."""
