"""edge's response cache: HTTP caching rules (``policy``) and a bounded store (``store``).

The shell (edge/serve) asks ``policy`` what a request and its response allow, and keeps
responses in a ``store``; neither module touches a socket or a clock.
"""

from edge.cache.policy import (
    CacheControl,
    RequestPlan,
    ResponsePlan,
    cache_key,
    conditional_lines,
    merge_304,
    not_modified,
    request_plan,
    request_plan_from_head,
    response_plan,
    revalidation_headers,
    strip_conditionals,
)
from edge.cache.store import CacheStore, Entry, EntryWriter, MemoryStore

__all__ = [
    "CacheControl",
    "CacheStore",
    "Entry",
    "EntryWriter",
    "MemoryStore",
    "RequestPlan",
    "ResponsePlan",
    "cache_key",
    "conditional_lines",
    "merge_304",
    "not_modified",
    "request_plan",
    "request_plan_from_head",
    "response_plan",
    "revalidation_headers",
    "strip_conditionals",
]
