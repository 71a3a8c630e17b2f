//! `POST /publish/ROUTE[/KEY...]` on the admin listener (never on public listeners): puts
//! messages into a route's feed, or into one channel of a route with channels (one path
//! segment per capture, in order). The body is read as a session POST's is (see
//! `transport::inbound`): `text/plain` is one text message, `application/octet-stream` one
//! binary message, `application/json` an array of strings or `{"binary": "<base64>"}` items.
//! The answer is `202 {"id": "<SSE id of the last message>", "subscribers": N}`.
//!
//! With `publish.token` set (or else `server.admin_auth.token`), `Authorization: Bearer
//! <token>` is required (401 otherwise), compared in constant time.

use crate::bridge::channels::ChannelError;
use crate::bridge::hub::Provenance;
use crate::gateway::{GatewayState, Target};
use crate::metrics;
use crate::policy::admin::{bearer, same_secret};
use crate::transport::inbound::{parse_body, BodyError};
use bytes::{Bytes, BytesMut};
use pingora::protocols::http::ServerSession;

/// An answer: status, content type, body, and extra headers.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    fn error(status: u16, message: impl Into<String>) -> Self {
        let mut body = message.into().into_bytes();
        body.push(b'\n');
        Self {
            status,
            body,
            headers: Vec::new(),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// The publish URL's route name and raw key segments: `/publish/ROUTE/K1/K2`.
fn target(path: &str) -> Option<(&str, Vec<&str>)> {
    let rest = path.strip_prefix("/publish/")?;
    let mut parts = rest.split('/');
    let route = parts.next().filter(|r| !r.is_empty())?;
    Some((route, parts.collect()))
}

/// Where a publish's body comes from.
pub enum Body<'a> {
    /// Read whole already (the admin listener's lean path, which reads bodies of a known,
    /// small length).
    Read(Bytes),
    /// Still to be read from pingora's session.
    Session(&'a mut ServerSession),
}

impl Body<'_> {
    /// The whole body, at most `max` bytes (413 past it).
    async fn read(self, max: usize) -> Result<Bytes, Answer> {
        match self {
            Body::Read(b) if b.len() > max => Err(too_big(max)),
            Body::Read(b) => Ok(b),
            Body::Session(session) => read_body(session, max).await,
        }
    }
}

/// Serves a request under `/publish/` (`req` is its head). A route without a `publish.token`
/// of its own takes `admin_token` (`server.admin_auth.token`) when that is set.
pub async fn serve(
    state: &GatewayState,
    req: &pingora::http::RequestHeader,
    body: Body<'_>,
    admin_token: Option<&str>,
) -> Answer {
    let path = req.uri.path();
    let Some((name, keys)) = target(path) else {
        return Answer::error(404, "publish at /publish/ROUTE or /publish/ROUTE/KEY...");
    };
    let Some(rt) = state.routes.iter().find(|rt| rt.route.name == name) else {
        return Answer::error(404, format!("no route is named {name:?}"));
    };
    let Target::Bridge(bridge) = &rt.target else {
        return Answer::error(404, format!("route {name} takes no publishes"));
    };
    let Some(publish) = &bridge.spec.publish else {
        return Answer::error(
            404,
            format!("route {name} takes no publishes (it has no `publish:`)"),
        );
    };
    let outcome = |o: &str| metrics::PUBLISHES.with_label_values(&[name, o]).inc();
    if req.method != http::Method::POST {
        return Answer::error(405, "publish with POST").header("allow", "POST");
    }
    if let Some(token) = publish.token.as_deref().or(admin_token) {
        let given = bearer(
            req.headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        );
        if !same_secret(given, token.as_bytes()) {
            outcome("unauthorized");
            return Answer::error(401, "a publish needs `Authorization: Bearer <token>`")
                .header("www-authenticate", "Bearer");
        }
    }
    let max = rt.route.limits.max_message as usize;
    let body = match body.read(max).await {
        Ok(b) => b,
        Err(answer) => {
            outcome("invalid");
            return answer;
        }
    };
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let messages = match parse_body(content_type, body) {
        Ok(m) => m,
        Err(BodyError::Malformed(why)) => {
            outcome("invalid");
            return Answer::error(400, why);
        }
        Err(BodyError::TooMany) => {
            outcome("invalid");
            return Answer::error(
                413,
                format!(
                    "at most {} messages per publish",
                    crate::transport::inbound::MAX_MESSAGES_PER_POST
                ),
            );
        }
    };
    let channel = match bridge.channel_of(&keys) {
        Ok(c) => c,
        Err(ChannelError::BadName(why)) => {
            outcome("invalid");
            return Answer::error(404, why);
        }
        Err(ChannelError::Full(max)) => {
            outcome("refused");
            return Answer::error(
                503,
                format!("route {name} has its max_channels ({max}) open; try again later"),
            )
            .header("retry-after", "5");
        }
    };
    if channel.is_none() && !keys.is_empty() {
        outcome("invalid");
        return Answer::error(
            404,
            format!("route {name} has no channels: publish at /publish/{name}"),
        );
    }
    let count = messages.len() as u64;
    let messages: Vec<(Bytes, bool)> = messages
        .into_iter()
        .map(|m| (m.payload, m.binary))
        .collect();
    // On the admin listener's connection, which runs on a client-serving thread: the
    // subscribers there are woken without a hand-off.
    let feed = channel.as_deref().unwrap_or(bridge);
    let published = match (crate::cluster::get(), feed.hub()) {
        (Some(cluster), Some(hub)) if hub.is_clustered() && cluster.is_up() => {
            Some(publish_clustered(cluster, &rt.route.name, hub, messages).await)
        }
        _ => feed.publish(messages),
    };
    // The subscribers it woke write their deliveries before this answer is written.
    tokio::task::yield_now().await;
    let Some((id, subscribers)) = published else {
        outcome("invalid");
        return Answer::error(
            404,
            format!("route {name} has no shared feed to publish to"),
        );
    };
    outcome("accepted");
    metrics::PUBLISHED_MESSAGES
        .with_label_values(&[name])
        .inc_by(count);
    let body = serde_json::json!({ "id": id, "subscribers": subscribers });
    let mut body = serde_json::to_vec(&body).unwrap_or_default();
    body.push(b'\n');
    Answer {
        status: 202,
        body,
        headers: Vec::new(),
    }
}

/// Publishes on a cluster: each message is appended to the feed's stream first (any instance
/// may; Redis decides its seq), then into this instance's hub with that seq, so every
/// instance's subscribers see it with the same id. If Redis fails meanwhile, the rest go to
/// this instance's subscribers only (the cluster's local mode).
async fn publish_clustered(
    cluster: &crate::cluster::Cluster,
    route: &str,
    hub: &crate::bridge::Hub,
    messages: Vec<(Bytes, bool)>,
) -> (String, usize) {
    let keys = cluster.keys_of(route, hub);
    let cap = hub.replay().max(64);
    let mut last = hub.head();
    for (payload, binary) in messages {
        match crate::cluster::stream::append_published(cluster, &keys, cap, &payload, binary).await
        {
            Ok((seq, prev)) => {
                hub.publish_at(seq, prev, None, payload, binary, Provenance::Published);
                last = seq;
            }
            Err(e) => {
                log::warn!("route {route}: publish: cannot append to the cluster's stream ({e}); delivered on this instance only");
                last = hub.publish(payload, binary).seq;
            }
        }
    }
    hub.touch();
    (format!("{}-{last}", hub.epoch), hub.subscribers())
}

fn too_big(max: usize) -> Answer {
    Answer::error(413, format!("the body exceeds max_message ({max} bytes)"))
}

/// The whole body, at most `max` bytes (413 past it), each read within the POST deadline.
async fn read_body(session: &mut ServerSession, max: usize) -> Result<Bytes, Answer> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_big(max));
    }
    let mut body = BytesMut::new();
    loop {
        let chunk = tokio::time::timeout(
            crate::bridge::session::POST_DEADLINE,
            session.read_request_body(),
        )
        .await;
        match chunk {
            Err(_) => {
                return Err(Answer::error(
                    408,
                    "the request body did not arrive in time",
                ))
            }
            Ok(Err(e)) => return Err(Answer::error(400, format!("unreadable body: {e}"))),
            Ok(Ok(None)) => return Ok(body.freeze()),
            Ok(Ok(Some(data))) => {
                if body.len() + data.len() > max {
                    return Err(too_big(max));
                }
                body.extend_from_slice(&data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_a_route_and_its_keys() {
        assert_eq!(target("/publish/chat"), Some(("chat", vec![])));
        assert_eq!(target("/publish/chat/a/b"), Some(("chat", vec!["a", "b"])));
        assert_eq!(target("/publish/"), None);
        assert_eq!(target("/other"), None);
    }
}
