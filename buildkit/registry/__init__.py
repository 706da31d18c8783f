"""The provisioning registry: what was provisioned where (SQLite by default, PostgreSQL by URL).

from buildkit.registry import open_registry
with open_registry("sqlite:///.buildkit/registry.sqlite") as registry:
    for device in registry.devices():  # frozen DeviceRecord: hostname, state, public_key, key_id,
        ...                            # card_files {path: sha256}, manifest_sha256, ...
    registry.set_state("web1", "quarantined", "attestation failed: manifest mismatch", actor="verifier")
"""

from buildkit.registry.schema import SCHEMA_VERSION, STATES, TRANSITIONS
from buildkit.registry.store import (
    REGISTRY_ENV,
    CardFile,
    DeviceRecord,
    NewDevice,
    Provisioning,
    Registry,
    StateChange,
    change_dict,
    check_hostname,
    default_url,
    engine_url,
    normalize_board_revision,
    normalize_mac,
    normalize_sd_cid,
    normalize_serial,
    open_registry,
    record_dict,
    registry_exists,
)

__all__ = [
    "REGISTRY_ENV",
    "SCHEMA_VERSION",
    "STATES",
    "TRANSITIONS",
    "CardFile",
    "DeviceRecord",
    "NewDevice",
    "Provisioning",
    "Registry",
    "StateChange",
    "change_dict",
    "check_hostname",
    "default_url",
    "engine_url",
    "normalize_board_revision",
    "normalize_mac",
    "normalize_sd_cid",
    "normalize_serial",
    "open_registry",
    "record_dict",
    "registry_exists",
]
