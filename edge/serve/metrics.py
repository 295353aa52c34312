"""Prometheus metrics: plain integer increments on the hot path, text only when scraped.

Per-route counters live on slotted ``RouteMetrics`` objects that the compiled
runtime holds directly, so a request pays one dict increment and one bisect. The
``Metrics`` registry outlives policy reloads (a route keeps its counters while its
label stays the same).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

__all__ = ["DURATION_BUCKETS", "Metrics", "RouteMetrics"]

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class RouteMetrics:
    """Counters of one route: responses by (service, code) and the duration histogram."""

    __slots__ = ("buckets", "codes", "duration_sum", "label", "ratelimited")

    def __init__(self, label: str) -> None:
        self.label = label
        self.codes: dict[tuple[str, int], int] = {}
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.ratelimited = 0

    def observe(self, service: str, code: int, duration: float) -> None:
        key = (service, code)
        codes = self.codes
        codes[key] = codes.get(key, 0) + 1
        self.buckets[bisect_left(DURATION_BUCKETS, duration)] += 1
        self.duration_sum += duration


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Everything /metrics shows; collectors add live gauges owned by other parts."""

    def __init__(self) -> None:
        self.routes: dict[str, RouteMetrics] = {}
        self.connections_active = 0
        self.connections_total = 0
        self.reloads = {"ok": 0, "error": 0}
        self.bad_requests = 0
        self.rollbacks = 0
        # each returns (name, type, help, [(labels dict, value)])
        self.collectors: list[Callable[[], Iterable[tuple[str, str, str, list[tuple[dict[str, str], float]]]]]] = []

    def route(self, label: str) -> RouteMetrics:
        found = self.routes.get(label)
        if found is None:
            found = self.routes[label] = RouteMetrics(label)
        return found

    def render(self) -> str:
        out: list[str] = []
        add = out.append
        add("# HELP edge_requests_total Responses sent, by route, service and status code.")
        add("# TYPE edge_requests_total counter")
        for label, rm in self.routes.items():
            route = _escape(label)
            for (service, code), count in rm.codes.items():
                add(f'edge_requests_total{{route="{route}",service="{_escape(service)}",code="{code}"}} {count}')
        add("# HELP edge_request_duration_seconds Time from request head to the end of the response.")
        add("# TYPE edge_request_duration_seconds histogram")
        for label, rm in self.routes.items():
            if not any(rm.buckets):
                continue
            route = _escape(label)
            total = 0
            for bound, count in zip(DURATION_BUCKETS, rm.buckets):
                total += count
                add(f'edge_request_duration_seconds_bucket{{route="{route}",le="{bound}"}} {total}')
            total += rm.buckets[-1]
            add(f'edge_request_duration_seconds_bucket{{route="{route}",le="+Inf"}} {total}')
            add(f'edge_request_duration_seconds_sum{{route="{route}"}} {rm.duration_sum:.6f}')
            add(f'edge_request_duration_seconds_count{{route="{route}"}} {total}')
        add("# HELP edge_ratelimit_rejected_total Requests answered 429 by a rate limit.")
        add("# TYPE edge_ratelimit_rejected_total counter")
        for label, rm in self.routes.items():
            add(f'edge_ratelimit_rejected_total{{route="{_escape(label)}"}} {rm.ratelimited}')
        add("# HELP edge_connections_active Client connections open now.")
        add("# TYPE edge_connections_active gauge")
        add(f"edge_connections_active {self.connections_active}")
        add("# HELP edge_connections_total Client connections accepted.")
        add("# TYPE edge_connections_total counter")
        add(f"edge_connections_total {self.connections_total}")
        add("# HELP edge_bad_requests_total Requests rejected as malformed (400/431/413/501/505).")
        add("# TYPE edge_bad_requests_total counter")
        add(f"edge_bad_requests_total {self.bad_requests}")
        add("# HELP edge_policy_reloads_total Policy reloads by result.")
        add("# TYPE edge_policy_reloads_total counter")
        for result, count in self.reloads.items():
            add(f'edge_policy_reloads_total{{result="{result}"}} {count}')
        add("# HELP edge_policy_rollbacks_total Reloads undone because changed routes failed (policy reload:).")
        add("# TYPE edge_policy_rollbacks_total counter")
        add(f"edge_policy_rollbacks_total {self.rollbacks}")
        for collect in self.collectors:
            for name, kind, help_text, samples in collect():
                add(f"# HELP {name} {help_text}")
                add(f"# TYPE {name} {kind}")
                for labels, value in samples:
                    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                    add(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")
        return "\n".join(out) + "\n"
