"""Tests for bench/charts.py: python3 -m unittest discover -s bench -p 'test_*.py'"""
import contextlib
import io
import json
import pathlib
import re
import sys
import tempfile
import unittest
import xml.dom.minidom

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import charts  # noqa: E402

RATES = (20, 100)


def fan(server, rate, deliveries, p99, ratio=1.0, connected=500):
    d = {"clients": 500, "connected": connected, "rate": rate, "deliveries_per_s": deliveries,
         "delivered_ratio": ratio, "gaps": 0, "duplicates": 0, "p99_ms": p99, "transport": "sse"}
    return f"{server} fanout sse 500@{rate}/s {json.dumps(d)}"


def idle(label, kib, clients=1000):
    return f"{label} {json.dumps({'clients': clients, 'kib_per_client': kib, 'scenario': 'idle'})}"


def results(skip=()):
    lines = [idle("switchyard idle sse", 7.8), idle("nchan idle sse", 10.0), idle("pushpin idle sse", 36.5),
             idle("switchyard idle pass-through ws", 7.0, 500), idle("nginx idle pass-through ws", 17.7, 500),
             idle("switchyard idle sockjs eventsource", 11.5), idle("sockjs-node idle sockjs eventsource", 14.0)]
    for rate in RATES:
        lines += [fan("switchyard", rate, rate * 500, 50), fan("nchan", rate, rate * 200, 900, 0.4),
                  fan("pushpin", rate, 0, 0, 0.0)]
    lines += ["switchyard drain {\"clients\":10,\"closed_with\":{\"1001\":10}}",
              "cluster idle: 10 SSE clients, 1.0 Redis commands/s; {\"clients\":5} {\"clients\":5}"]
    return "\n".join(l for l in lines if not any(s in l for s in skip)) + "\n"


def http(mode, server, rps, ratio, conns=64, threads=1):
    d = {"mode": mode, "server": server, "connections": conns, "threads": threads, "rounds": 5,
         "requests_per_s": rps, "p99_ms": 1.4, "cpu_us_per_request": 9.8, "vs_nginx": ratio, "p99_vs_nginx": 1.0}
    return f"http {mode} {server} {conns} connections {threads} threads {json.dumps(d)}"


def with_http(text, skip=()):
    lines = [http(mode, s, r, r / 70000) for mode in ("get", "post")
             for s, r in (("switchyard", 71000), ("pingora", 33000), ("nginx", 70000), ("haproxy", 69000))]
    return text + "\n".join(l for l in lines if not any(s in l for s in skip)) + "\n"


def run_main(*argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = charts.main(list(argv))
    return code, err.getvalue()


def groups(svg, cls):
    dom = xml.dom.minidom.parseString(svg)
    return [g for g in dom.getElementsByTagName("g") if g.getAttribute("class") == cls]


class Charts(unittest.TestCase):
    def test_every_series_is_drawn(self):
        out = charts.charts(results())
        self.assertEqual(sorted(out), ["fanout-deliveries.svg", "fanout-p99.svg", "idle-memory.svg"])
        for name in ("fanout-deliveries.svg", "fanout-p99.svg"):
            series = {g.getAttribute("data-server"): g for g in groups(out[name], "series")}
            self.assertEqual(list(series), ["switchyard", "nchan", "pushpin"], name)
            for g in series.values():
                points = g.getElementsByTagName("polyline")[0].getAttribute("points").split()
                self.assertEqual(len(points), len(RATES), name)
            # Runs that did not deliver fully are hollow: nchan's and pushpin's here.
            self.assertNotIn('fill="#ffffff"', series["switchyard"].toxml())
            self.assertIn('fill="#ffffff"', series["nchan"].toxml())
        bars = [(g.getAttribute("data-server"), g.getAttribute("data-kind")) for g in groups(out["idle-memory.svg"], "bar")]
        self.assertEqual(bars, [("switchyard", "sse"), ("nchan", "sse"), ("pushpin", "sse"),
                                ("switchyard", "pass-through ws"), ("nginx", "pass-through ws"),
                                ("switchyard", "sockjs eventsource"), ("sockjs-node", "sockjs eventsource")])
        self.assertIn(">36.5<", out["idle-memory.svg"])

    def test_http_rows_get_a_chart_of_their_own(self):
        self.assertNotIn("http.svg", charts.charts(results()), "older results have no HTTP rows")
        svg = charts.charts(with_http(results()))["http.svg"]
        bars = [(g.getAttribute("data-server"), g.getAttribute("data-kind")) for g in groups(svg, "bar")]
        self.assertEqual(bars[:4], [("switchyard", "GET, 64 connections, 1 thread(s)"),
                                    ("nginx", "GET, 64 connections, 1 thread(s)"),
                                    ("haproxy", "GET, 64 connections, 1 thread(s)"),
                                    ("pingora", "GET, 64 connections, 1 thread(s)")])
        self.assertEqual(len(bars), 8)
        self.assertIn("(1.01x)", svg)

    def test_a_setup_missing_a_server_fails(self):
        self.assert_fails(with_http(results(), skip=["http post haproxy"]),
                          "http: POST, 64 connections, 1 thread(s) has no result for haproxy")

    def test_writes_files_from_results(self):
        with tempfile.TemporaryDirectory() as d:
            src = pathlib.Path(d, "results.txt")
            src.write_text(results())
            code, err = run_main("--results", str(src), "--rates", "20 100", "--out", d)
            self.assertEqual(code, 0, err)
            for name in ("fanout-deliveries.svg", "fanout-p99.svg", "idle-memory.svg"):
                xml.dom.minidom.parse(str(pathlib.Path(d, name)))

    def assert_fails(self, text, message, *extra):
        with tempfile.TemporaryDirectory() as d:
            src = pathlib.Path(d, "results.txt")
            src.write_text(text)
            out = pathlib.Path(d, "out")
            code, err = run_main("--results", str(src), "--out", str(out), *extra)
            self.assertEqual(code, 1)
            self.assertIn(message, err)
            self.assertFalse(out.exists(), "nothing is written when a chart cannot be drawn")

    def test_a_missing_fanout_point_fails(self):
        self.assert_fails(results(skip=["pushpin fanout sse 500@100/s"]), "pushpin has no result at 100 msg/s")

    def test_a_missing_fanout_server_fails(self):
        self.assert_fails(results(skip=["nchan fanout"]), "no results for nchan")

    def test_a_rate_the_run_swept_must_be_there(self):
        self.assert_fails(results(), "switchyard has no result at 50 msg/s", "--rates", "20 50 100")

    def test_a_missing_idle_server_fails(self):
        self.assert_fails(results(skip=["nginx idle"]), "idle memory: no '<server> idle ...' results for nginx")

    def test_no_fanout_at_all_fails(self):
        self.assert_fails(results(skip=["fanout"]), "no SSE fan-out results")

    def test_markdown_without_raw_results_fails(self):
        with tempfile.TemporaryDirectory() as d:
            md = pathlib.Path(d, "B.md")
            md.write_text("# Benchmarks\n\nno results\n")
            code, err = run_main("--from-markdown", str(md), "--out", d)
            self.assertEqual(code, 1)
            self.assertIn("no '## Raw results' section", err)

    def test_committed_charts_match_committed_results(self):
        """docs/bench/*.svg are what bench/charts.py draws from docs/BENCHMARKS.md's raw results,
        and both BENCHMARKS.md and the compare.sh that writes it embed every one."""
        md = (ROOT / "docs/BENCHMARKS.md").read_text(encoding="utf-8")
        compare = (ROOT / "bench/compare.sh").read_text(encoding="utf-8")
        for name, svg in charts.charts(charts.raw_results_from_markdown(md)).items():
            self.assertEqual((ROOT / "docs/bench" / name).read_text(encoding="utf-8"), svg,
                             f"docs/bench/{name} is stale: bench/charts.py --from-markdown docs/BENCHMARKS.md")
            self.assertRegex(md, rf"!\[[^\]]+\]\(bench/{re.escape(name)}\)")
            self.assertRegex(compare, rf"\n  chart {re.escape(name)} \"")


if __name__ == "__main__":
    unittest.main()
