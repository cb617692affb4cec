"""Switchyard: an OpenAI-compatible LLM gateway."""

__version__ = "0.1.0"

# modules compiled by `make native` must match their sources (proxy/native.py)
from proxy.native import check as _check_native  # noqa: E402

_check_native()
