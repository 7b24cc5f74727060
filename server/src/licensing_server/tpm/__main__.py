"""``python -m licensing_server.tpm --state-dir D --port P``: run the software TPM (swtpm)."""

from licensing_server.tpm.swtpm import main

raise SystemExit(main())
