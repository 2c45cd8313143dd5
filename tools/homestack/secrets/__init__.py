"""Secrets: sops files with age recipients, machine host keys, and the audits around them.

The real `sops` binary does all encryption and decryption (see `sops.py`); this package
derives recipients from the plan, reads sops metadata without decrypting, and re-keys
files without ever leaving one half-written.
"""
