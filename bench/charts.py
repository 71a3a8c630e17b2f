#!/usr/bin/env python3
"""Draws the benchmark charts that docs/BENCHMARKS.md embeds, as hand-written SVG (standard
library only), from the raw results bench/compare.sh collects: one line per run, a label, then
the run's JSON.

    bench/charts.py --results results.txt --out docs/bench      # what compare.sh runs
    bench/charts.py --from-markdown docs/BENCHMARKS.md           # redraw from committed results

Writes into --out (docs/bench by default):
  fanout-deliveries.svg  SSE fan-out deliveries/s against the publish rate, a line per server
  fanout-p99.svg         SSE fan-out p99 latency against the publish rate, a line per server
  idle-memory.svg        memory per idle client, a bar per server and kind of client
  http.svg               plain HTTP pass-through requests/s, a bar per server and setup (when the
                         results have bench/http.sh's rows: every server in every setup)

Exits non-zero, writing nothing, when a series it expects is missing (a server without a
fan-out result at a rate the run swept, a server without idle rows): an empty or partial chart
would look like a result. A run that did not deliver fully is drawn, as a hollow marker.
"""
import argparse
import json
import math
import pathlib
import re
import sys
from xml.sax.saxutils import escape

# The servers bench/compare.sh measures in the fan-out sweep and for idle memory.
FANOUT_SERVERS = ("switchyard", "nchan", "pushpin")
IDLE_SERVERS = ("switchyard", "nchan", "pushpin", "nginx", "sockjs-node")
P99_TARGET_MS = 100  # compare.sh's fan-out target ("Targets"), drawn as a reference line

# Okabe-Ito colours (told apart with colour blindness), and a marker per server as well.
COLORS = {
    "switchyard": "#0072B2",
    "nchan": "#E69F00",
    "pushpin": "#009E73",
    "nginx": "#D55E00",
    "sockjs-node": "#CC79A7",
    "haproxy": "#56B4E9",
}
OTHER_COLORS = ("#F0E442", "#000000", "#999999")
MARKERS = ("circle", "square", "triangle", "diamond")

# How an idle row's label (after "<server> idle ") reads in the chart.
IDLE_KINDS = {
    "sse": "SSE",
    "ws": "WebSocket (terminated)",
    "ws-deflate": "WebSocket + permessage-deflate",
    "poll": "long-poll (waiting)",
    "pass-through ws": "WebSocket pass-through (2 sockets each)",
    "raw connection": "connection that sent nothing",
    "sockjs xhr_streaming": "SockJS xhr_streaming",
    "sockjs eventsource": "SockJS eventsource",
}

FONT = "-apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
INK = "#1f2328"      # text and axes: dark on the white card, in light and dark themes alike
MUTED = "#59636e"
GRID = "#d8dee4"


class ChartError(Exception):
    pass


def attr(s):
    return escape(str(s), {'"': "&quot;"})


# ---------------------------------------------------------------- reading the raw results

def parse_results(text):
    """[(label, [json objects])] from results.txt lines: a label, then one or more JSON objects."""
    rows = []
    decoder = json.JSONDecoder()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        start = line.find("{")
        if start < 0:
            raise ChartError(f"raw results line {n} has no JSON: {line[:80]!r}")
        label, rest, objs = line[:start].strip(), line[start:], []
        while rest.strip():
            try:
                obj, end = decoder.raw_decode(rest.strip())
            except json.JSONDecodeError as e:
                raise ChartError(f"raw results line {n} ({label!r}): bad JSON: {e}") from None
            objs.append(obj)
            rest = rest.strip()[end:]
        rows.append((label, objs))
    if not rows:
        raise ChartError("the raw results are empty")
    return rows


def raw_results_from_markdown(text):
    """The fenced block under the '## Raw results' heading of docs/BENCHMARKS.md."""
    lines = text.splitlines()
    try:
        i = next(k for k, l in enumerate(lines) if l.strip() == "## Raw results")
    except StopIteration:
        raise ChartError("no '## Raw results' section in the markdown") from None
    try:
        start = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("```"))
        end = next(k for k in range(start + 1, len(lines)) if lines[k].startswith("```"))
    except StopIteration:
        raise ChartError("the '## Raw results' section has no complete ``` block") from None
    return "\n".join(lines[start + 1:end])


def need(obj, key, what):
    if not isinstance(obj.get(key), (int, float)):
        raise ChartError(f"{what}: no numeric {key!r} in its JSON")
    return obj[key]


FANOUT_LABEL = re.compile(r"^(?P<server>\S+) fanout sse (?P<clients>\d+)@(?P<rate>\d+)/s$")


def fanout_sweep(rows, servers, rates):
    """{server: {rate: json}} for the SSE fan-out sweep; every server at every rate."""
    sweep = {}
    for label, objs in rows:
        m = FANOUT_LABEL.match(label)
        if not m:
            continue
        d = objs[0]
        for key in ("rate", "clients", "connected", "deliveries_per_s", "delivered_ratio", "gaps", "duplicates", "p99_ms"):
            need(d, key, label)
        if d["rate"] != int(m["rate"]) or d["clients"] != int(m["clients"]):
            raise ChartError(f"{label}: its JSON says {d['clients']}@{d['rate']}/s")
        per = sweep.setdefault(m["server"], {})
        if d["rate"] in per:
            raise ChartError(f"two results for {label}")
        per[d["rate"]] = d
    if not sweep:
        raise ChartError("no SSE fan-out results ('<server> fanout sse N@R/s' lines)")
    found = {r for per in sweep.values() for r in per}
    if min(found) <= 0:
        raise ChartError(f"fan-out sweep: a run at {min(found)} msg/s cannot go on a log scale")
    rates = sorted(set(rates) if rates else found)
    for server in servers:
        if server not in sweep:
            raise ChartError(f"fan-out sweep: no results for {server} (expected {', '.join(servers)})")
        missing = [r for r in rates if r not in sweep[server]]
        if missing:
            raise ChartError(f"fan-out sweep: {server} has no result at {', '.join(map(str, missing))} msg/s"
                             f" (expected rates {' '.join(map(str, rates))})")
    clients = {d["clients"] for per in sweep.values() for d in per.values()}
    if len(clients) != 1:
        raise ChartError(f"fan-out sweep: runs with different subscriber counts {sorted(clients)}")
    order = [s for s in servers if s in sweep] + sorted(s for s in sweep if s not in servers)
    return {s: {r: sweep[s][r] for r in sorted(sweep[s])} for s in order}, sorted(found), clients.pop()


IDLE_LABEL = re.compile(r"^(?P<server>\S+) idle (?P<kind>.+)$")


def idle_rows(rows, servers):
    """[(kind, [(server, clients, kib_per_client)])], kinds in the order the run measured them."""
    kinds = {}
    for label, objs in rows:
        m = IDLE_LABEL.match(label)
        if not m:
            continue
        d = objs[0]
        need(d, "kib_per_client", label)
        need(d, "clients", label)
        bars = kinds.setdefault(m["kind"], {})
        if m["server"] in bars:
            raise ChartError(f"two results for {label}")
        bars[m["server"]] = (d["clients"], d["kib_per_client"])
    seen = {s for bars in kinds.values() for s in bars}
    missing = [s for s in servers if s not in seen]
    if missing:
        raise ChartError(f"idle memory: no '<server> idle ...' results for {', '.join(missing)}")
    order = [s for s in servers if s in seen] + sorted(seen - set(servers))
    return [(kind, [(s, *bars[s]) for s in order if s in bars]) for kind, bars in kinds.items()], order


HTTP_LABEL = re.compile(r"^http (?P<mode>\S+) (?P<server>\S+) (?P<conns>\d+) connections (?P<threads>\d+) threads$")
HTTP_SERVERS = ("switchyard", "nginx", "haproxy", "pingora")


def http_rows(rows):
    """[(setup, [(server, requests_per_s, vs_nginx)])] from bench/http.sh's rows, setups in the
    order the run measured them; [] when the run has none. Every setup must have every server
    any setup has."""
    setups = {}
    for label, objs in rows:
        m = HTTP_LABEL.match(label)
        if not m:
            continue
        d = objs[0]
        setup = f"{m['mode'].upper()}, {m['conns']} connections, {m['threads']} thread(s)"
        bars = setups.setdefault(setup, {})
        if m["server"] in bars:
            raise ChartError(f"two results for {label}")
        bars[m["server"]] = (need(d, "requests_per_s", label), need(d, "vs_nginx", label))
    seen = {s for bars in setups.values() for s in bars}
    for setup, bars in setups.items():
        missing = sorted(seen - set(bars))
        if missing:
            raise ChartError(f"http: {setup} has no result for {', '.join(missing)}")
    order = [s for s in HTTP_SERVERS if s in seen] + sorted(seen - set(HTTP_SERVERS))
    return [(setup, [(s, *bars[s]) for s in order]) for setup, bars in setups.items()]


# ---------------------------------------------------------------- drawing

def color_of(server, order):
    if server in COLORS:
        return COLORS[server]
    others = [s for s in order if s not in COLORS]
    return OTHER_COLORS[others.index(server) % len(OTHER_COLORS)]


def fmt_num(v):
    return f"{v:.2f}".rstrip("0").rstrip(".")


def si(v):
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if v >= div:
            return fmt_num(v / div) + suffix
    return fmt_num(v)


def ms(v):
    return f"{v:,.0f}" if v >= 1 else fmt_num(v)


def log_ticks(lo, hi):
    """(major, minor) tick values covering [lo, hi]: decades, and 2x, 5x labelled too when the
    range is short."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    steps = (1, 2, 5) if b - a <= 3 else (1,)
    major = [m * 10 ** e for e in range(a, b + 1) for m in steps]
    minor = [m * 10 ** e for e in range(a, b + 1) for m in (2, 5) if m not in steps]
    keep = lambda ts: [t for t in ts if lo <= t * 1.0001 and t <= hi * 1.0001]
    return keep(major), keep(minor)


def nice_step(span, n=5):
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


class Svg:
    def __init__(self, width, height, title):
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="{escape(FONT, {chr(39): "&apos;"})}" '
            f'role="img" aria-label="{attr(title)}">',
            f"<title>{escape(title)}</title>",
            f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" rx="6" fill="#ffffff" stroke="{GRID}"/>',
        ]

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=12, anchor="start", fill=INK, weight=None, rotate=False, baseline=None):
        attrs = f'x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{fill}"'
        if anchor != "start":
            attrs += f' text-anchor="{anchor}"'
        if weight:
            attrs += f' font-weight="{weight}"'
        if baseline:
            attrs += f' dominant-baseline="{baseline}"'
        if rotate:
            attrs += f' transform="rotate(-90 {x:.1f} {y:.1f})"'
        self.add(f"<text {attrs}>{escape(s)}</text>")

    def line(self, x1, y1, x2, y2, stroke=INK, width=1, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" stroke-width="{width}"{d}/>')

    def marker(self, shape, x, y, color, hollow=False, r=4.5):
        fill = "#ffffff" if hollow else color
        style = f'fill="{fill}" stroke="{color}" stroke-width="1.5"'
        if shape == "circle":
            self.add(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" {style}/>')
        elif shape == "square":
            self.add(f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}" {style}/>')
        elif shape == "triangle":
            pts = f"{x:.1f},{y - r - 1:.1f} {x + r + 0.5:.1f},{y + r - 0.5:.1f} {x - r - 0.5:.1f},{y + r - 0.5:.1f}"
            self.add(f'<polygon points="{pts}" {style}/>')
        else:
            pts = f"{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y:.1f} {x:.1f},{y + r + 1:.1f} {x - r - 1:.1f},{y:.1f}"
            self.add(f'<polygon points="{pts}" {style}/>')

    def render(self):
        return "\n".join(self.parts + ["</svg>"]) + "\n"


def legend(svg, x, y, entries):
    """entries: [(name, color, marker or None, dash or None, kind)] in one row from (x, y)."""
    for name, color, marker, dash, kind in entries:
        if kind == "bar":
            svg.add(f'<rect x="{x:.1f}" y="{y - 6:.1f}" width="14" height="12" fill="{color}"/>')
            x += 20
        else:
            svg.line(x, y, x + 28, y, stroke=color, width=2, dash=dash)
            if marker:
                svg.marker(marker, x + 14, y, color)
            x += 34
        svg.text(x, y, name, size=12, baseline="central")
        x += 7.2 * len(name) + 22


def line_chart(title, subtitle, x_title, y_title, series, x_ticks, y_fmt, refs=(), hollow_means=""):
    """series: [(name, color, marker, [(x, y, hollow)])], both axes log scale. refs: extra lines
    [(name, [(x, y)])] drawn dashed in grey, or a horizontal one [(name, y)]. A hollow point
    is explained by hollow_means under the legend."""
    W, H = 800, 490
    L, R, T, B = 84, 24, 116, 64
    xs = [x for _, _, _, pts in series for x, _, _ in pts]
    ys = [y for _, _, _, pts in series for _, y, _ in pts if y > 0]
    for _, pts in refs:
        ys += [y for _, y in pts] if isinstance(pts, list) else [pts]
    if not ys:
        raise ChartError(f"{title}: every value is zero")
    x_lo, x_hi = min(xs) / 1.25, max(xs) * 1.25
    y_lo, y_hi = min(ys) / 1.6, max(ys) * 1.6
    px = lambda x: L + (math.log10(x) - math.log10(x_lo)) / (math.log10(x_hi) - math.log10(x_lo)) * (W - L - R)
    py = lambda y: H - B - (math.log10(max(y, y_lo)) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo)) * (H - T - B)

    svg = Svg(W, H, f"{title} ({subtitle})")
    svg.text(L, 28, title, size=17, weight="600")
    svg.text(L, 48, subtitle, size=12, fill=MUTED)
    major, minor = log_ticks(y_lo, y_hi)
    for t in minor:
        svg.line(L, py(t), W - R, py(t), stroke=GRID, width=0.6, dash="2 3")
    for t in major:
        svg.line(L, py(t), W - R, py(t), stroke=GRID)
        svg.text(L - 8, py(t), y_fmt(t), size=11, anchor="end", fill=MUTED, baseline="central")
    for t in x_ticks:
        svg.line(px(t), H - B, px(t), H - B + 5)
        svg.line(px(t), T, px(t), H - B, stroke=GRID, width=0.6, dash="2 3")
        svg.text(px(t), H - B + 19, str(t), size=11, anchor="middle", fill=MUTED)
    svg.line(L, T, L, H - B)
    svg.line(L, H - B, W - R, H - B)
    svg.text((L + W - R) / 2, H - 16, x_title, size=12, anchor="middle")
    svg.text(20, (T + H - B) / 2, y_title, size=12, anchor="middle", rotate=True)

    entries = []
    for name, pts in refs:
        svg.add(f'<g class="reference" data-name="{attr(name)}">')
        if isinstance(pts, list):
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            svg.add(f'<polyline points="{path}" fill="none" stroke="{MUTED}" stroke-width="1.5" stroke-dasharray="6 4"/>')
        else:
            svg.line(L, py(pts), W - R, py(pts), stroke=MUTED, width=1.5, dash="6 4")
        svg.add("</g>")
    floored = any_hollow = False
    for name, color, marker, pts in series:
        svg.add(f'<g class="series" data-server="{attr(name)}">')
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y, _ in pts)
        svg.add(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2.5" stroke-linejoin="round"/>')
        for x, y, hollow in pts:
            # Nothing at all (zero) has no place on a log scale: drawn on the floor.
            floored |= y <= 0
            any_hollow |= hollow
            svg.marker(marker, px(x), py(y), color, hollow=hollow)
        svg.add("</g>")
        entries.append((name, color, marker, None, "line"))
    entries += [(name, MUTED, None, "6 4", "line") for name, _ in refs]
    legend(svg, L, 72, entries)
    notes = ([hollow_means] if any_hollow and hollow_means else []) + (["a point on the floor: zero"] if floored else [])
    if notes:
        svg.marker("circle", L + 14, 96, MUTED, hollow=True)
        svg.text(L + 34, 96, "; ".join(notes), size=12, fill=MUTED, baseline="central")
    return svg.render()


def complete(d):
    """Every subscriber connected and got (nearly) every message, in order: compare.sh's
    "delivers fully" in its targets."""
    return (d["connected"] == d["clients"] and d["delivered_ratio"] >= 0.99
            and d["gaps"] == 0 and d["duplicates"] == 0)


def fanout_charts(sweep, rates, clients):
    servers = list(sweep)
    styled = [(s, color_of(s, servers), MARKERS[i % len(MARKERS)]) for i, s in enumerate(servers)]
    pts = lambda s, key: [(r, d[key], not complete(d)) for r, d in sweep[s].items()]
    x_title = "publish rate (messages/s, log scale)"
    hollow = "hollow: incomplete (under 99% delivered, gaps, or subscribers not connected)"
    deliveries = line_chart(
        "SSE fan-out: deliveries per second",
        f"{clients:,} SSE subscribers of one feed, one run per rate; higher is better",
        x_title,
        "deliveries/s (log scale)",
        [(s, c, m, pts(s, "deliveries_per_s")) for s, c, m in styled],
        rates,
        si,
        refs=[(f"every message to every subscriber (rate × {clients:,})", [(r, r * clients) for r in rates])],
        hollow_means=hollow,
    )
    p99 = line_chart(
        "SSE fan-out: p99 latency (ms)",
        f"{clients:,} SSE subscribers of one feed, one run per rate; publish to receipt of what was delivered;"
        " lower is better",
        x_title,
        "p99 latency, ms (log scale)",
        [(s, c, m, pts(s, "p99_ms")) for s, c, m in styled],
        rates,
        ms,
        refs=[(f"target: p99 < {P99_TARGET_MS} ms", P99_TARGET_MS)],
        hollow_means=hollow,
    )
    return deliveries, p99


def bar_chart(title, aria, sub, x_title, groups, servers, value_label=lambda v, note: f"{v:.1f}", R=70):
    """Horizontal bars: groups of (key, name, detail, [(server, value, note)]), a bar per server;
    `aria` is the chart's accessible title."""
    W, L = 860, 300
    T, BAR, GAP, GROUP = 96, 16, 4, 22
    H = T + sum(len(b) * (BAR + GAP) - GAP + GROUP for _, _, _, b in groups) - GROUP + 78
    top = max(v for _, _, _, bars in groups for _, v, _ in bars)
    if top <= 0:
        raise ChartError(f"{title}: every value is zero")
    step = nice_step(top)
    x_hi = math.ceil(top / step) * step
    px = lambda v: L + v / x_hi * (W - L - R)
    svg = Svg(W, H, aria)
    svg.text(24, 28, title, size=17, weight="600")
    svg.text(24, 48, sub, size=12, fill=MUTED)
    legend(svg, 24, 72, [(s, color_of(s, servers), None, None, "bar") for s in servers])
    bottom = H - 78 + 8
    ticks = [i * step for i in range(int(round(x_hi / step)) + 1)]
    for t in ticks:
        svg.line(px(t), T - 6, px(t), bottom, stroke=GRID, width=0.6 if t else 1)
        svg.line(px(t), bottom, px(t), bottom + 5)
        svg.text(px(t), bottom + 19, fmt_num(t), size=11, anchor="middle", fill=MUTED)
    svg.line(L, bottom, W - R, bottom)
    svg.line(L, T - 6, L, bottom)
    svg.text((L + W - R) / 2, bottom + 42, x_title, size=12, anchor="middle")
    y = T
    for key, name, detail, bars in groups:
        h = len(bars) * (BAR + GAP) - GAP
        svg.text(L - 10, y + h / 2 - 7, name, size=12, anchor="end", baseline="central")
        svg.text(L - 10, y + h / 2 + 9, detail, size=10, anchor="end", fill=MUTED, baseline="central")
        for server, value, note in bars:
            color = color_of(server, servers)
            svg.add(f'<g class="bar" data-server="{attr(server)}" data-kind="{attr(key)}">')
            svg.add(f'<rect x="{L}" y="{y:.1f}" width="{max(px(value) - L, 1):.1f}" height="{BAR}" fill="{color}"/>')
            svg.text(px(value) + 5, y + BAR / 2, value_label(value, note), size=11, baseline="central")
            svg.add("</g>")
            y += BAR + GAP
        y += GROUP - GAP
    return svg.render()


def idle_chart(kinds, servers):
    """Memory per idle client: bars grouped by kind of client, a bar per server that measured it."""
    groups = [
        (kind, IDLE_KINDS.get(kind, kind),
         " / ".join(f"{c:,}" for c in sorted({c for _, c, _ in bars})) + " clients",
         [(server, kib, None) for server, _, kib in bars])
        for kind, bars in kinds
    ]
    sub = "RSS growth per client held, all of the server's processes; lower is better"
    return bar_chart("Memory per idle client (KiB)", f"Memory per idle client (KiB per client, {sub})",
                     sub, "KiB per idle client", groups, servers)


def http_chart(setups):
    """Plain HTTP pass-through: requests/s, bars grouped by setup, a bar per server."""
    servers = [s for s, _, _ in setups[0][1]]
    groups = [(setup, setup, "median of alternating rounds", bars) for setup, bars in setups]
    sub = "one nginx answering 200 behind each proxy; higher is better; (x nginx's rate)"
    return bar_chart("Plain HTTP/1.1 pass-through (requests/s)",
                     f"Plain HTTP/1.1 pass-through (requests/s, {sub})", sub,
                     "requests per second", groups, servers,
                     lambda v, ratio: f"{si(v)} ({ratio:.2f}x)", R=110)


# ---------------------------------------------------------------- main

def charts(results_text, fanout_servers=FANOUT_SERVERS, idle_servers=IDLE_SERVERS, rates=None):
    """{file name: svg text}; raises ChartError when an expected series is missing."""
    rows = parse_results(results_text)
    sweep, rates, clients = fanout_sweep(rows, fanout_servers, rates)
    deliveries, p99 = fanout_charts(sweep, rates, clients)
    kinds, servers = idle_rows(rows, idle_servers)
    out = {
        "fanout-deliveries.svg": deliveries,
        "fanout-p99.svg": p99,
        "idle-memory.svg": idle_chart(kinds, servers),
    }
    setups = http_rows(rows)
    if setups:
        out["http.svg"] = http_chart(setups)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--results", help="bench/compare.sh's raw results (results.txt)")
    src.add_argument("--from-markdown", help="docs/BENCHMARKS.md: its '## Raw results' section")
    p.add_argument("--out", default="docs/bench", help="folder for the SVG files (default docs/bench)")
    p.add_argument("--rates", help="the fan-out rates the run swept (e.g. '20 50 100 200'): each must be there")
    p.add_argument("--fanout-servers", default=",".join(FANOUT_SERVERS), help="comma-separated")
    p.add_argument("--idle-servers", default=",".join(IDLE_SERVERS), help="comma-separated")
    a = p.parse_args(argv)
    try:
        if a.results:
            text = pathlib.Path(a.results).read_text(encoding="utf-8")
        else:
            text = raw_results_from_markdown(pathlib.Path(a.from_markdown).read_text(encoding="utf-8"))
        rates = [int(r) for r in re.split(r"[\s,]+", a.rates.strip())] if a.rates else None
        out = charts(text, tuple(filter(None, a.fanout_servers.split(","))),
                     tuple(filter(None, a.idle_servers.split(","))), rates)
    except (ChartError, OSError, ValueError) as e:
        print(f"charts.py: {e}", file=sys.stderr)
        return 1
    folder = pathlib.Path(a.out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, svg in out.items():
        (folder / name).write_text(svg, encoding="utf-8")
        print(f"wrote {folder / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
