#!/usr/bin/env python3
"""Writes docs/SOAK.md (and docs/bench/soak-rss.svg) from a soak's work directory.

    bench/soak_report.py WORK_DIR [--out docs/SOAK.md] [--commit REV]

WORK_DIR is what `KEEP=1 bench/soak.sh` keeps: result.json, samples.csv, events.log.
Standard library only.
"""
import argparse
import csv
import datetime
import json
import os
import sys


def rss_svg(rows, t0, events, path):
    """RSS of each instance over the run, with the faults marked."""
    w, h, left, bottom, top, right = 760, 300, 60, 40, 20, 20
    series = {}
    for r in rows:
        series.setdefault(r["instance"], []).append(
            ((int(r["ms"]) - t0) / 60000, int(r["rss_kib"]) / 1024))
    xmax = max(x for s in series.values() for x, _ in s) or 1
    ymax = max(y for s in series.values() for _, y in s) * 1.1 or 1
    sx = lambda x: left + x / xmax * (w - left - right)
    sy = lambda y: h - bottom - y / ymax * (h - bottom - top)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{w}" height="{h}" fill="white"/>']
    for ms, what in events:
        x = sx((ms - t0) / 60000)
        if x < left or x > w - right:
            continue
        colour = {"backend-kill": "#d62728", "redis-down": "#9467bd"}.get(what)
        if colour:
            out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{h - bottom}" '
                       f'stroke="{colour}" stroke-dasharray="3,3" stroke-width="1"/>')
    for i in range(6):
        y = ymax * i / 5
        out.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{w - right}" y2="{sy(y):.1f}" '
                   f'stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.0f}</text>')
    for i in range(7):
        x = xmax * i / 6
        out.append(f'<text x="{sx(x):.1f}" y="{h - bottom + 16}" text-anchor="middle">'
                   f'{x:.0f}</text>')
    out.append(f'<text x="{w / 2}" y="{h - 6}" text-anchor="middle">minutes</text>')
    out.append(f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" '
               f'text-anchor="middle">RSS MiB</text>')
    colours = ["#1f77b4", "#ff7f0e"]
    for i, (name, pts) in enumerate(sorted(series.items())):
        d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{colours[i % 2]}" stroke-width="1.5" '
                   f'points="{d}"/>')
        out.append(f'<text x="{left + 10 + i * 110}" y="{top + 4}" fill="{colours[i % 2]}">'
                   f'instance {name}</text>')
    out.append(f'<text x="{left + 230}" y="{top + 4}" fill="#d62728">backend killed</text>')
    out.append(f'<text x="{left + 340}" y="{top + 4}" fill="#9467bd">Redis killed</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--out", default="docs/SOAK.md")
    ap.add_argument("--commit", default="")
    ap.add_argument("--command", default="bench/soak.sh")
    a = ap.parse_args()
    res = json.load(open(os.path.join(a.work, "result.json")))
    rows = list(csv.DictReader(open(os.path.join(a.work, "samples.csv"))))
    events = []
    for line in open(os.path.join(a.work, "events.log")):
        ms, _, what = line.strip().partition(" ")
        events.append((int(ms), what))
    t0 = int(rows[0]["ms"])
    start = next(ms for ms, what in events if what == "start")
    at = lambda ms: f"{(ms - start) / 60000:.1f} min"
    c = res["clients"]
    params = {"rate": 4, "kill_every": 300, "reload_every": 60, "warmup": 600, "min_life": 30,
              "max_life": 600, "sessions_per_sec": 5}
    try:
        params.update(json.load(open(os.path.join(a.work, "params.json"))))
    except OSError:
        pass
    svg = os.path.join(os.path.dirname(a.out), "bench", "soak-rss.svg")
    os.makedirs(os.path.dirname(svg), exist_ok=True)
    rss_svg(rows, t0, events, svg)

    day = datetime.datetime.fromtimestamp(start / 1000, datetime.timezone.utc)
    L = []
    L.append("# Soak")
    L.append("")
    L.append(f"One run of `{a.command}` on {day:%Y-%m-%d %H:%M} UTC"
             + (f", commit `{a.commit}`" if a.commit else "")
             + ". This file is written by `bench/soak_report.py` from the run's kept work "
             "directory (`KEEP=1`). The machine: 2 cores, loopback only; the two instances, "
             "Redis, the backend and the clients all share it.")
    L.append("")
    L.append(f"**Verdict: {'PASS' if res['pass'] else 'FAIL'}.**")
    L.append("")
    L.append("## What ran")
    L.append("")
    total = c.get("clients")
    L.append(f"- Two switchyard instances (one thread each) in a cluster over one Redis, a "
             f"WebSocket backend (`switchyard-bench serve`, a feed at {params['rate']} msg/s of 100 B), and "
             f"{total:,} clients (`switchyard-bench soak`) for {c['seconds']} s.")
    L.append("- The clients: SSE and long-poll subscribers that resume (`Last-Event-ID`, the "
             "cursor) across reconnects and alternate between the instances; WebSocket and "
             "SockJS (xhr_streaming) subscribers; pass-through WebSocket tunnels to the "
             "backend's echo, one round trip every 2 s; per-client long-poll sessions opened "
             f"and abandoned ({params['sessions_per_sec']} a second, reaped after "
             f"`session_ttl: 10s`). Every client leaves after a random "
             f"{params['min_life']}-{params['max_life']} s and comes back to the other instance.")
    kills = [ms for ms, w in events if w == "backend-kill"]
    reloads = [ms for ms, w in events if w.startswith("reload")]
    redis = [ms for ms, w in events if w == "redis-down"]
    L.append(f"- Faults: the backend killed (`kill -9`) and restarted 2 s later "
             f"{len(kills)} times (every {params['kill_every']} s), a config reload (SIGHUP, a route "
             f"added or removed) {len(reloads)} times (every {params['reload_every']} s), Redis killed and restarted 5 s "
             f"later {len(redis)} time(s) (at {', '.join(at(m) for m in redis)}).")
    L.append("- Every 10 s: each instance's RSS, open file descriptors and open gauges.")
    L.append("")
    L.append("## Messages")
    L.append("")
    L.append("Every client checked each message against the backend's own log of what it wrote "
             "to the gateway (seqs are unique across backend restarts). A *lost* message is one "
             "the backend logged that a client's chain stepped over; *explained* losses are "
             "ones the gateway announced (`event: gap`, `\"missed\"`), or ones sent while Redis "
             "was down, which the README's failure table documents (a non-holder misses what "
             "the backend sent before its own connection opened). WebSocket and SockJS have no "
             "resume: each connection is a chain of its own.")
    L.append("")
    L.append("| transport | connections | left (churn) | ended by server | messages verified | "
             "duplicates | reordered | lost (unexplained) | announced gaps | missed in Redis "
             "outage | repeated on resume during the outage |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, t in c["transports"].items():
        L.append(f"| {name} | {t['connects']:,} | {t['left']:,} | {t['ended_by_server']:,} | "
                 f"{t['messages']:,} | {t['duplicates'] - t.get('repeated_on_resume_in_redis_outage', 0):,} | "
                 f"{t['reordered']:,} | {t['lost']:,} | {t['missed_announced']:,} | "
                 f"{t['missed_in_redis_outage']:,} | "
                 f"{t.get('repeated_on_resume_in_redis_outage', 0):,} |")
    tu = c["tunnels"]
    s = c["sessions"]
    L.append("")
    L.append(f"- Messages the backend logged: {c['messages_logged_by_backend']:,}. "
             f"Unexplained: **{c['unexplained']}**.")
    L.append(f"- Tunnels: {tu['connects']:,} opened, {tu['round_trips']:,} echo round trips, "
             f"{tu['wrong_answers']} wrong answers; {tu['cut_mid_trip']:,} cut mid-trip and "
             f"{tu['failed_connects']:,} refused, all while the backend was down (a tunnel is "
             f"the backend's connection).")
    L.append(f"- Abandoned sessions: {s['opened']:,} opened, {s['refused']:,} refused (502 "
             f"while the backend was down).")
    L.append("")
    L.append("## Resources")
    L.append("")
    L.append("![RSS of each instance over the run](bench/soak-rss.svg)")
    L.append("")
    L.append(f"| instance | RSS start MiB | RSS after warm-up ({params['warmup']} s) | RSS peak | "
             "RSS at the end of load | RSS after the drain | slope after warm-up |")
    L.append("|---|---|---|---|---|---|---|")
    for i, sl in sorted(res["rss_slope_after_warmup"].items()):
        se = res["start_and_end"][f"instance_{i}"]
        L.append(f"| {i} | {se['rss_kib']['start'] / 1024:.1f} | {sl['rss_mib_first']} | "
                 f"{sl['rss_mib_max']} | {sl['rss_mib_last']} | "
                 f"{se['rss_kib']['end'] / 1024:.1f} | **{sl['mib_per_hour']:+} MiB/hour** "
                 f"({sl['samples']} samples) |")
    L.append("")
    L.append("Start (before any client) and end (after the clients left and 40 s of drain: "
             "`session_ttl`, `disconnect_delay`, `backend_linger`):")
    L.append("")
    L.append("| instance | fds | client connections | sessions | SockJS sessions | backend "
             "connections | memory budget used (bytes) |")
    L.append("|---|---|---|---|---|---|---|")
    for i in ("0", "1"):
        se = res["start_and_end"][f"instance_{i}"]
        cell = lambda k: f"{se[k]['start']:,} → {se[k]['end']:,}"
        L.append(f"| {i} | {cell('fds')} | {cell('client_connections')} | {cell('sessions')} | "
                 f"{cell('sockjs_sessions')} | {cell('backend_connections')} | "
                 f"{cell('memory_used')} |")
    L.append("")
    L.append("The memory budget's end value is the feed's replay ring (`replay: 4096` messages "
             "of ~100 B), which outlives the feed's backend connection so that late resumes "
             "still work; it is bounded by `replay` and charged to the budget.")
    L.append("")
    L.append(f"Panics: {res['panics']}. Reloads applied: {res['reloads_applied']} of "
             f"{res['reloads']}.")
    L.append("")
    with open(a.out, "w") as f:
        f.write("\n".join(L))
    print(f"wrote {a.out} and {svg}", file=sys.stderr)


if __name__ == "__main__":
    main()
