"""The names of the files in an exported bag, shared by the writer and the offline verifier."""

from __future__ import annotations

from typing import Final

BAGIT_VERSION: Final = "1.0"
BAGIT_TXT: Final = "bagit.txt"
BAG_INFO: Final = "bag-info.txt"
PAYLOAD_DIR: Final = "data"
MANIFEST_SHA256: Final = "manifest-sha256.txt"
# BLAKE3 is no BagIt-registered algorithm, so its manifest is an ordinary tag file (bagit-python and
# other validators ignore it rather than failing on an unknown `manifest-blake3.txt`), covered by the
# SHA-256 tag manifest and so by the signature. Same line format as a payload manifest.
MANIFEST_BLAKE3: Final = "blake3-manifest.txt"
RECORDINGS_JSON: Final = "recordings.json"  # per-file facts: device, officer, unit, times, case, digests
PUBLIC_KEY: Final = "station-public-key.pem"
TAG_MANIFEST: Final = "tagmanifest-sha256.txt"
# Signs TAG_MANIFEST's exact bytes; it cannot list itself, so it is the one tag file left out of it.
SIGNATURE: Final = "signature-ed25519.txt"

# Tag files the tag manifest must list: anything it does not list could be changed without breaking
# the signature.
SIGNED_TAG_FILES: Final = (BAGIT_TXT, BAG_INFO, MANIFEST_SHA256, MANIFEST_BLAKE3, RECORDINGS_JSON, PUBLIC_KEY)
