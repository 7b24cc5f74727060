"""Users' enclaves as the frontend serves them: licences, creation, watching, deletion."""

from licensing_server.enclaves._catalog import (
    EnclaveCatalog,
    EnclaveUpdate,
    ProvisioningBackend,
    QuoteBackend,
)

__all__ = ["EnclaveCatalog", "EnclaveUpdate", "ProvisioningBackend", "QuoteBackend"]
