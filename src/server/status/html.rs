//! The status page as HTML: server-rendered with `write!` into one String, inline CSS, no
//! script and nothing fetched from elsewhere, so it reads the same with JavaScript off; it
//! reloads itself every [`REFRESH_SECONDS`].

use super::{Status, REFRESH_SECONDS};
use std::fmt::Write;

/// `text` made safe for HTML text and for attribute values in double or single quotes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `90` as `1m 30s`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match () {
        _ if d > 0 => format!("{d}d {h}h"),
        _ if h > 0 => format!("{h}h {m}m"),
        _ if m > 0 => format!("{m}m {s}s"),
        _ => format!("{s}s"),
    }
}

const STYLE: &str = "\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1f2328;background:#f6f8fa}\
header{background:#24292f;color:#fff;padding:14px 24px;display:flex;flex-wrap:wrap;gap:6px 24px;align-items:baseline}\
header h1{font-size:18px;margin:0 12px 0 0}header span{color:#d0d7de}\
main{padding:8px 24px 24px;max-width:1200px}\
h2{font-size:15px;margin:22px 0 8px}\
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d0d7de}\
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #eaeef2;vertical-align:top}\
th{background:#f6f8fa;font-weight:600;font-size:12px;text-transform:uppercase;color:#57606a}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}\
.muted{color:#6e7781}\
.badge{display:inline-block;padding:0 7px;border-radius:10px;font-size:12px;font-weight:600}\
.ok{background:#dafbe1;color:#116329}.bad{background:#ffebe9;color:#a40e26}.idle{background:#eaeef2;color:#57606a}\
.warn{background:#fff8c5;color:#7d4e00}\
pre{background:#fff;border:1px solid #d0d7de;padding:8px 10px;white-space:pre-wrap;margin:6px 0 0}\
footer{margin-top:20px;color:#6e7781;font-size:12px}";

fn badge(class: &str, text: &str) -> String {
    format!("<span class=\"badge {class}\">{}</span>", escape(text))
}

impl Status {
    /// The page for people: plain HTML and inline CSS, no script, reloads itself.
    pub fn to_html(&self) -> String {
        let mut h = String::with_capacity(8192);
        let _ = self.write_html(&mut h);
        h
    }

    fn write_html(&self, h: &mut String) -> std::fmt::Result {
        write!(
            h,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
             <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
             <title>switchyard status</title><style>{STYLE}</style></head><body>\n"
        )?;
        let ready = if self.ready {
            badge("ok", "ready")
        } else {
            badge("bad", "draining")
        };
        write!(
            h,
            "<header><h1>switchyard</h1>{ready}<span>version {}</span>\
             <span>up {} (since {})</span><span>config generation {}</span></header>\n<main>\n",
            escape(self.version),
            duration(self.uptime_seconds),
            escape(&self.started_at),
            self.config.generation,
        )?;
        self.write_routes(h)?;
        self.write_upstreams(h)?;
        self.write_refusals(h)?;
        self.write_config(h)?;
        write!(
            h,
            "<footer>Refreshes every {REFRESH_SECONDS} s. The same facts for scripts: \
             <a href=\"/status.json\">/status.json</a>; every counter: \
             <a href=\"/metrics\">/metrics</a>.</footer>\n</main></body></html>\n"
        )
    }

    fn write_routes(&self, h: &mut String) -> std::fmt::Result {
        h.push_str(
            "<h2>Routes</h2>\n<table id=\"routes\"><thead><tr><th>Route</th><th>Kind</th>\
             <th>Transports</th><th>Clients</th><th>Backend</th><th>Sessions</th>\
             <th>Requests</th></tr></thead><tbody>\n",
        );
        if self.routes.is_empty() {
            h.push_str("<tr><td colspan=\"7\" class=\"muted\">no routes</td></tr>\n");
        }
        for r in &self.routes {
            let host = if r.host == "*" {
                String::new()
            } else {
                escape(&r.host)
            };
            write!(
                h,
                "<tr data-route=\"{}\"><td><strong>{}</strong><br><code>{host}{}</code></td>",
                escape(&r.name),
                escape(&r.name),
                escape(&r.path),
            )?;
            let kind = match &r.bridge {
                Some(b) => format!(
                    "bridge<br><span class=\"muted\">{}{}, {}</span>",
                    b.backend,
                    b.builtin.map(|k| format!(" {k}")).unwrap_or_default(),
                    b.fanout.replace('_', "-"),
                ),
                None => {
                    let balance = r.proxy.as_ref().map_or("", |p| p.balance);
                    format!(
                        "proxy<br><span class=\"muted\">{}</span>",
                        balance.replace('_', " ")
                    )
                }
            };
            let transports = if r.transports.is_empty() {
                "<span class=\"muted\">an HTML page</span>".to_owned()
            } else {
                escape(&r.transports.join(", "))
            };
            write!(h, "<td>{kind}</td><td>{transports}</td>")?;
            let per: Vec<String> = r
                .clients
                .iter()
                .map(|(t, n)| format!("{} {n}", escape(t)))
                .collect();
            write!(
                h,
                "<td class=\"clients\" data-total=\"{}\"><strong>{}</strong><br>\
                 <span class=\"muted\">{}</span></td>",
                r.clients_total,
                r.clients_total,
                per.join(" · "),
            )?;
            let backend =
                match (&r.bridge, &r.proxy) {
                    (Some(b), _) => {
                        let state = match b.state {
                            "connected" => badge("ok", "connected"),
                            "builtin" => badge("ok", "builtin"),
                            "via_cluster" => badge("ok", "via cluster"),
                            "disconnected" => badge("bad", "disconnected"),
                            other => badge("idle", other),
                        };
                        let addr = b
                            .backend_addr
                            .as_deref()
                            .map(|a| format!(" <code>{}</code>", escape(a)))
                            .unwrap_or_default();
                        let channels =
                            b.channels
                                .as_ref()
                                .map(|c| {
                                    let busiest: Vec<String> = c
                                        .busiest
                                        .iter()
                                        .map(|ch| {
                                            format!("{} {}", escape(&ch.name), ch.subscribers)
                                        })
                                        .collect();
                                    format!(
                                "<br><span class=\"muted\">{} of {} channels open{}{}</span>",
                                c.open,
                                c.max,
                                if busiest.is_empty() { "" } else { "; busiest: " },
                                busiest.join(" · "),
                            )
                                })
                                .unwrap_or_default();
                        if b.builtin.is_some() {
                            state
                        } else if b.backend == "publish" {
                            format!("{}{channels}", badge("ok", "publishes"))
                        } else {
                            format!(
                                "{state}{addr}<br><span class=\"muted\">{} reconnect{}, \
                             {} failed connect{}</span>",
                                b.reconnects,
                                if b.reconnects == 1 { "" } else { "s" },
                                b.connects_failed,
                                if b.connects_failed == 1 { "" } else { "s" },
                            ) + &channels
                        }
                    }
                    (None, Some(p)) => {
                        let up = p.upstreams.iter().filter(|u| u.healthy).count();
                        let class = match up {
                            0 => "bad",
                            n if n < p.upstreams.len() => "warn",
                            _ => "ok",
                        };
                        badge(
                            class,
                            &format!("{up}/{} upstreams healthy", p.upstreams.len()),
                        )
                    }
                    (None, None) => String::new(),
                };
            // Sessions exist on per-client routes and SockJS and Engine.IO endpoints only.
            let per_client = r.bridge.as_ref().is_some_and(|b| b.fanout == "per_client");
            let held = [
                (
                    "sockjs",
                    r.sockjs_sessions_open,
                    r.transports.contains(&"sockjs"),
                ),
                (
                    "engine.io",
                    r.engineio_sessions_open,
                    r.transports.contains(&"engineio") || r.transports.contains(&"socketio"),
                ),
            ];
            let shown: Vec<_> = held.iter().filter(|(_, n, on)| *on || *n > 0).collect();
            let mut sessions = match per_client {
                true => r.sessions_open.to_string(),
                false if !shown.is_empty() => String::new(),
                false => "<span class=\"muted\">–</span>".to_owned(),
            };
            for (i, (name, n, _)) in shown.iter().enumerate() {
                let _ = write!(
                    sessions,
                    "{}<span class=\"muted\">{name}</span> {n}",
                    if per_client || i > 0 { "<br>" } else { "" },
                );
            }
            writeln!(
                h,
                "<td class=\"backend\">{backend}</td><td class=\"n\">{sessions}</td>\
                 <td class=\"n\">{}</td></tr>",
                r.requests_total
            )?;
        }
        h.push_str("</tbody></table>\n");
        Ok(())
    }

    fn write_upstreams(&self, h: &mut String) -> std::fmt::Result {
        let proxies: Vec<_> = self
            .routes
            .iter()
            .filter_map(|r| Some((r, r.proxy.as_ref()?)))
            .collect();
        if proxies.is_empty() {
            return Ok(());
        }
        h.push_str(
            "<h2>Upstreams</h2>\n<table id=\"upstreams\"><thead><tr><th>Route</th>\
             <th>Upstream</th><th>Address</th><th>Health</th><th>In flight</th>\
             <th>Connect failures</th></tr></thead><tbody>\n",
        );
        for (r, p) in proxies {
            for u in &p.upstreams {
                let health = match (u.healthy, p.health_checked) {
                    (true, true) => badge("ok", "healthy"),
                    (true, false) => {
                        badge("idle", "up") + " <span class=\"muted\">(no health check)</span>"
                    }
                    (false, _) => badge("bad", "down"),
                };
                writeln!(
                    h,
                    "<tr data-route=\"{}\" data-upstream=\"{}\"><td>{}</td><td>{}</td>\
                     <td><code>{}</code></td><td>{health}</td><td class=\"n\">{}</td>\
                     <td class=\"n\">{}</td></tr>",
                    escape(&r.name),
                    escape(&u.name),
                    escape(&r.name),
                    escape(&u.name),
                    escape(&u.addr),
                    u.in_flight,
                    u.connect_failures,
                )?;
            }
        }
        h.push_str("</tbody></table>\n");
        Ok(())
    }

    fn write_refusals(&self, h: &mut String) -> std::fmt::Result {
        let r = &self.refusals_last_minute;
        writeln!(
            h,
            "<h2>Refusals in the last minute: <span id=\"refusals-total\">{}</span></h2>",
            r.total
        )?;
        if r.by_reason.is_empty() {
            h.push_str("<p class=\"muted\">none</p>\n");
            return Ok(());
        }
        h.push_str(
            "<table id=\"refusals\"><thead><tr><th>Reason</th><th>Count</th></tr></thead><tbody>\n",
        );
        let mut rows: Vec<_> = r.by_reason.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (reason, n) in rows {
            writeln!(
                h,
                "<tr><td><code>{}</code></td><td class=\"n\">{n}</td></tr>",
                escape(reason)
            )?;
        }
        h.push_str("</tbody></table>\n");
        Ok(())
    }

    fn write_config(&self, h: &mut String) -> std::fmt::Result {
        let c = &self.config;
        write!(
            h,
            "<h2>Config</h2>\n<table id=\"config\"><tbody>\
             <tr><th>Generation</th><td>{}</td></tr>\
             <tr><th>Reloads</th><td>{} applied, {} refused</td></tr>\
             <tr><th>Last reload</th><td>",
            c.generation, c.reloads_succeeded, c.reloads_failed,
        )?;
        match &c.last_reload {
            None => h.push_str("<span class=\"muted\">none since start</span>"),
            Some(r) => {
                let outcome = match &r.error {
                    None => badge("ok", "applied"),
                    Some(_) => badge("bad", "refused"),
                };
                write!(
                    h,
                    "{outcome} {} ({} ago), generation {} in force",
                    escape(&r.at),
                    duration(r.seconds_ago),
                    r.generation
                )?;
                if let Some(e) = &r.error {
                    write!(h, "<pre id=\"reload-error\">{}</pre>", escape(e))?;
                }
            }
        }
        h.push_str("</td></tr></tbody></table>\n");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    #[test]
    fn escape_covers_text_and_both_attribute_quotes() {
        assert_eq!(
            escape(r#"<script>alert('x' & "y")</script>"#),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;"
        );
        assert_eq!(escape("plain-name_1"), "plain-name_1");
    }

    #[test]
    fn durations_read_in_their_two_largest_units() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(90), "1m 30s");
        assert_eq!(duration(7260), "2h 1m");
        assert_eq!(duration(90_000), "1d 1h");
    }

    fn status_with(name: &str, error: Option<&str>) -> Status {
        Status {
            version: "0",
            started_at: "2026-01-01T00:00:00Z".into(),
            uptime_seconds: 1,
            ready: true,
            config: ConfigStatus {
                generation: 2,
                reloads_succeeded: 1,
                reloads_failed: 1,
                last_reload: Some(LastReload {
                    at: "2026-01-01T00:00:01Z".into(),
                    seconds_ago: 0,
                    outcome: "failure",
                    generation: 2,
                    error: error.map(str::to_owned),
                }),
            },
            routes: vec![RouteStatus {
                name: name.into(),
                host: "*".into(),
                path: "/p".into(),
                kind: "proxy",
                transports: vec!["http", "tunnel"],
                clients: BTreeMap::new(),
                clients_total: 0,
                sessions_open: 0,
                sockjs_sessions_open: 0,
                engineio_sessions_open: 0,
                requests_total: 0,
                refusals_total: 0,
                bridge: None,
                proxy: Some(ProxyStatus {
                    balance: "round_robin",
                    health_checked: false,
                    upstreams: vec![UpstreamStatus {
                        name: "<b>up</b>".into(),
                        addr: "127.0.0.1:1".into(),
                        healthy: true,
                        in_flight: 0,
                        connect_failures: 0,
                    }],
                }),
            }],
            refusals_last_minute: Refusals {
                total: 0,
                by_reason: BTreeMap::new(),
            },
        }
    }

    #[test]
    fn config_strings_reach_the_page_escaped() {
        let html = status_with("a\"<x>", Some("line 1: <bad> & \"worse\"")).to_html();
        assert!(html.contains("data-route=\"a&quot;&lt;x&gt;\""), "{html}");
        assert!(html.contains("<strong>a&quot;&lt;x&gt;</strong>"));
        assert!(html.contains("&lt;b&gt;up&lt;/b&gt;"));
        assert!(html.contains("line 1: &lt;bad&gt; &amp; &quot;worse&quot;"));
        assert!(!html.contains("<x>") && !html.contains("<bad>") && !html.contains("<b>up"));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    }
}
