#!/usr/bin/env python3
"""Writes grafana/switchyard.json: the switchyard dashboard (datasource, route and transport
as template variables). Run it after changing the panel list; CI checks every metric it
queries is one the gateway exports."""
import json
import pathlib

DS = {"type": "prometheus", "uid": "${datasource}"}
R = 'route=~"$route"'
RT = 'route=~"$route",transport=~"$transport"'


def panel(pid, title, unit, targets, x, y, w=12, h=8):
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(65 + i), "expr": e, "legendFormat": l, "datasource": DS}
            for i, (e, l) in enumerate(targets)
        ],
    }


def var(name, label, query):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


panels = [
    panel(1, "Open client connections", "short", [
        (f"sum by (route, transport) (switchyard_client_connections_open{{{RT}}})", "{{route}} {{transport}}"),
    ], 0, 0),
    panel(2, "Connections accepted per second", "cps", [
        (f"sum by (route, transport) (rate(switchyard_client_connections_total{{{RT}}}[5m]))", "{{route}} {{transport}}"),
    ], 12, 0),
    panel(3, "Messages per second, in and out", "short", [
        (f"sum by (route, transport, direction) (rate(switchyard_messages_total{{{RT}}}[5m]))", "{{route}} {{transport}} {{direction}}"),
        (f"sum by (route) (rate(switchyard_backend_messages_total{{{R}}}[5m]))", "{{route}} from backend"),
    ], 0, 8),
    panel(4, "Bytes per second, in and out", "Bps", [
        (f"sum by (route, transport, direction) (rate(switchyard_bytes_total{{{RT}}}[5m]))", "{{route}} {{transport}} {{direction}}"),
    ], 12, 8),
    panel(5, "Delivery latency (backend to client) p50 / p99", "s", [
        (f"histogram_quantile(0.5, sum by (le, route, transport) (rate(switchyard_delivery_latency_seconds_bucket{{{RT}}}[5m])))", "p50 {{route}} {{transport}}"),
        (f"histogram_quantile(0.99, sum by (le, route, transport) (rate(switchyard_delivery_latency_seconds_bucket{{{RT}}}[5m])))", "p99 {{route}} {{transport}}"),
    ], 0, 16),
    panel(6, "Client connection duration p50 / p99", "s", [
        (f"histogram_quantile(0.5, sum by (le, route) (rate(switchyard_client_connection_duration_seconds_bucket{{{RT}}}[5m])))", "p50 {{route}}"),
        (f"histogram_quantile(0.99, sum by (le, route) (rate(switchyard_client_connection_duration_seconds_bucket{{{RT}}}[5m])))", "p99 {{route}}"),
    ], 12, 16),
    panel(7, "Rejections per second by reason", "reqps", [
        (f"sum by (route, reason) (rate(switchyard_rejections_total{{{R}}}[5m]))", "{{route}} {{reason}}"),
        ("rate(switchyard_accepts_paced_total[5m])", "accepts paced"),
    ], 0, 24),
    panel(8, "HTTP answers per second by class", "reqps", [
        (f"sum by (route, class) (rate(switchyard_http_requests_total{{{R}}}[5m]))", "{{route}} {{class}}"),
    ], 12, 24),
    panel(9, "Backend health: streaming connections and upstream members", "short", [
        (f"sum by (route) (switchyard_backend_connections_open{{{R}}})", "{{route}} backend connections"),
        (f"sum by (route, upstream) (switchyard_upstream_healthy{{{R}}})", "{{route}} {{upstream}} up"),
    ], 0, 32),
    panel(10, "Backend connect attempts and failures per second", "short", [
        (f"sum by (route, outcome) (rate(switchyard_backend_connect_attempts_total{{{R}}}[5m]))", "{{route}} backend {{outcome}}"),
        (f"sum by (route, upstream) (rate(switchyard_upstream_connect_failures_total{{{R}}}[5m]))", "{{route}} {{upstream}} failed"),
        (f"sum by (route, outcome) (rate(switchyard_backend_posts_total{{{R}}}[5m]))", "{{route}} post {{outcome}}"),
    ], 12, 32),
    panel(11, "Slow consumers and dropped messages per second", "short", [
        (f"sum by (route, transport, action) (rate(switchyard_slow_consumer_total{{{RT}}}[5m]))", "{{route}} {{transport}} {{action}}"),
        (f"sum by (route, transport, reason) (rate(switchyard_dropped_messages_total{{{RT}}}[5m]))", "{{route}} {{transport}} dropped: {{reason}}"),
    ], 0, 40),
    panel(12, "Replay: resumes that found everything (hit) or not (miss)", "short", [
        (f"sum by (route, result) (rate(switchyard_replay_total{{{R}}}[5m]))", "{{route}} {{result}}"),
    ], 12, 40),
    panel(13, "Per-client sessions: open, and ended by reason", "short", [
        (f"sum by (route, transport) (switchyard_sessions_open{{{RT}}})", "open {{route}} {{transport}}"),
        (f"sum by (route, reason) (rate(switchyard_sessions_ended_total{{{R}}}[5m]))", "ended/s {{route}} {{reason}}"),
    ], 0, 48),
    panel(14, "Config reloads and generation", "short", [
        ("sum by (outcome) (increase(switchyard_config_reloads_total[1h]))", "reloads {{outcome}} (1h)"),
        ("switchyard_config_generation", "generation"),
    ], 12, 48),
    panel(15, "Memory budget (server.limits.memory): charged, budget, refusals per second", "bytes", [
        ("switchyard_memory_used_bytes", "charged"),
        ("switchyard_memory_budget_bytes", "budget"),
        ("sum by (what) (rate(switchyard_memory_refusals_total[5m]))", "refused/s {{what}}"),
    ], 0, 56),
    panel(16, "Legacy clients: SockJS transports in use, and sessions held", "short", [
        (f"sum by (route, transport) (switchyard_client_connections_open{{{R}, transport=~\"sockjs-.*\"}})", "open {{route}} {{transport}}"),
        (f"sum by (route, transport) (rate(switchyard_client_connections_total{{{R}, transport=~\"sockjs-.*\"}}[5m]))", "requests/s {{route}} {{transport}}"),
        (f"sum by (route) (switchyard_sockjs_sessions_open{{{R}}})", "sessions {{route}}"),
    ], 12, 56),
    panel(17, "WebSocket compression: wire bytes per payload byte (lower is better), and bytes saved per second", "short", [
        (f"sum by (route, direction) (rate(switchyard_ws_compression_bytes_total{{{RT}, stage=\"wire\"}}[5m])) / sum by (route, direction) (rate(switchyard_ws_compression_bytes_total{{{RT}, stage=\"plain\"}}[5m]))", "ratio {{route}} {{direction}}"),
        (f"sum by (route, direction) (rate(switchyard_ws_compression_bytes_total{{{RT}, stage=\"plain\"}}[5m])) - sum by (route, direction) (rate(switchyard_ws_compression_bytes_total{{{RT}, stage=\"wire\"}}[5m]))", "saved B/s {{route}} {{direction}}"),
    ], 0, 64),
    panel(18, "Cluster: nodes reaching Redis, feed lease holders (1 per route is right), feeds in local mode", "short", [
        ("switchyard_cluster_up", "{{node}} up"),
        (f"sum by (route) (switchyard_cluster_lease_held{{{R}}})", "{{route}} lease holders"),
        (f"sum by (route) (switchyard_cluster_local_feeds{{{R}}})", "{{route}} feeds in local mode"),
        (f"sum by (route) (increase(switchyard_cluster_fallbacks_total{{{R}}}[1h]))", "{{route}} fallbacks (1h)"),
    ], 12, 64),
    panel(19, "Cluster: stream read lag and Redis latency p99, Redis errors and failed appends per second", "s", [
        (f"histogram_quantile(0.5, sum by (le, route) (rate(switchyard_cluster_read_lag_seconds_bucket{{{R}}}[5m])))", "read lag p50 {{route}}"),
        (f"histogram_quantile(0.99, sum by (le, route) (rate(switchyard_cluster_read_lag_seconds_bucket{{{R}}}[5m])))", "read lag p99 {{route}}"),
        ("histogram_quantile(0.99, sum by (le, op) (rate(switchyard_cluster_redis_seconds_bucket[5m])))", "Redis p99 {{op}}"),
        ("sum by (op) (rate(switchyard_cluster_redis_errors_total[5m]))", "errors/s {{op}}"),
        (f"sum by (route) (rate(switchyard_cluster_appends_total{{{R}, outcome=\"failed\"}}[5m]))", "appends failed/s {{route}}"),
    ], 0, 72),
    panel(20, "Channels: open per route, opened / closed / refused (max_channels) per second, and HTTP publishes per second by outcome", "short", [
        (f"sum by (route) (switchyard_channels_open{{{R}}})", "{{route}} open"),
        (f"sum by (route, event) (rate(switchyard_channel_events_total{{{R}}}[5m]))", "{{route}} {{event}}/s"),
        (f"sum by (route, outcome) (rate(switchyard_publishes_total{{{R}}}[5m]))", "{{route}} publishes {{outcome}}/s"),
        (f"sum by (route) (rate(switchyard_published_messages_total{{{R}}}[5m]))", "{{route}} messages published/s"),
    ], 12, 72),
    panel(21, "Authorization (auth:): subrequests per second by outcome, cache hits, and subrequest p99 (seconds)", "short", [
        (f"sum by (route, outcome) (rate(switchyard_auth_requests_total{{{R}}}[5m]))", "{{route}} {{outcome}}/s"),
        (f"sum by (route) (rate(switchyard_auth_cache_hits_total{{{R}}}[5m]))", "{{route}} cache hits/s"),
        (f"histogram_quantile(0.99, sum by (le, route) (rate(switchyard_auth_request_seconds_bucket{{{R}}}[5m])))", "{{route}} p99 s"),
    ], 0, 80),
]

dashboard = {
    "title": "switchyard",
    "uid": "switchyard",
    "schemaVersion": 39,
    "version": 2,
    "editable": True,
    "refresh": "10s",
    "time": {"from": "now-1h", "to": "now"},
    "tags": ["switchyard", "gateway"],
    "templating": {
        "list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            var("route", "Route", "label_values(switchyard_http_requests_total, route)"),
            var("transport", "Transport", "label_values(switchyard_client_connections_total, transport)"),
        ]
    },
    "panels": panels,
}

out = pathlib.Path(__file__).resolve().parent.parent / "grafana" / "switchyard.json"
out.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {out} ({len(panels)} panels)")
