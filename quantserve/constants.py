"""Names every part of quantserve agrees on."""

from pathlib import Path

DEFAULT_CONFIG_PATH = Path("quantserve.yaml")
# Response headers: the variant that answered, and the one asked for when a fallback answered instead.
VARIANT_HEADER = "x-quantserve-variant"
FALLBACK_HEADER = "x-quantserve-fallback-from"
