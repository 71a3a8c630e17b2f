//! Socket.IO clients on plain WebSocket backends. A Socket.IO connection is an Engine.IO
//! session whose messages are Socket.IO packets ([`crate::wire::socketio`]); here an engine,
//! one per connection, turns them into plain backend sessions, one per namespace:
//!
//! ```text
//! client (Engine.IO messages)          engine                      backend (one WebSocket per namespace)
//! 0/admin,{"token":"x"}   CONNECT  --> open URL + /admin, X-Socketio-Auth: {"token":"x"}
//!                         <-- 40/admin,{"sid":..}   or 44/admin,{"message":"backend refused: 403",..}
//! 2/admin,["ev",1]        EVENT    --> ["ev",1]
//! 2/admin,5["ev",1]       + ack    --> {"event":["ev",1],"id":5}
//! 3/admin,5[...]          ACK      --> {"ack":5,"args":[...]}
//! 51-/admin,["f",{"_placeholder":true,"num":0}] + bytes --> the JSON, then one binary message
//! 1/admin,                DISCONNECT -> that backend session closed (1000)
//!                                  <-- ["ev",...]             : 2/admin,["ev",...]
//!                                  <-- {"ack":N,"args":[...]} : 3/admin,N[...]
//!                                  <-- {"event":[...],"id":M} : 2/admin,M[...]
//!                                  <-- any other text / bytes : the event "message"
//!                                  <-- close 1000, 3000-4999  : 1/admin, (no reconnect)
//!                                  <-- lost (1001, 1006, 1011): the connection closed (reconnect)
//! ```
//!
//! The engine is a session of its own to the Engine.IO layer (its outbox is what polls and
//! the WebSocket deliver; its uplink what the client sent): the transports are Engine.IO's,
//! unchanged. A packet the protocol refuses, or one for a namespace not joined, ends the
//! connection, as socket.io does.

use super::hub::{Gone, Message};
use super::session::{Driver, EndReason, Outgoing, Session};
use super::SessionTarget;
use super::{write_deadline, Bridge, ClientInfo, Consumer, Delivery, OpenError, SessionSite};
use crate::config::SocketIo;
use crate::wire::socketio::{self as sio, Kind, Protocol};
use bytes::Bytes;
use pingora::http::RequestHeader;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The header that carries a CONNECT's auth payload to the backend.
pub const AUTH_HEADER: &str = "x-socketio-auth";

/// Opens the engine of one Socket.IO connection: the session the Engine.IO layer holds. Its
/// namespaces' backend sessions open as the client joins them (protocol 4 joins `/` at once).
pub fn open(
    bridge: &Bridge,
    req: &RequestHeader,
    client: &ClientInfo,
    transport: &'static str,
    protocol: Protocol,
    ttl: Duration,
) -> Arc<Session> {
    let site = bridge
        .session_site()
        .expect("socketio routes are per_client");
    let opts = bridge
        .spec
        .socketio
        .clone()
        .expect("the route lists socketio");
    let Driver { session, uplink } = Session::gateway_own(&bridge.route, transport, ttl);
    let (events, from_namespaces) = mpsc::channel(64);
    let engine = Engine {
        site,
        opts,
        req: req.clone(),
        client: client.clone(),
        transport,
        protocol,
        deadline: write_deadline(&bridge.route.keepalive),
        session: session.clone(),
        namespaces: HashMap::new(),
        parted: HashSet::new(),
        incoming: None,
        max_held: bridge.route.limits.max_message as usize,
        events,
        joined_once: false,
    };
    tokio::spawn(engine.run(uplink, from_namespaces));
    session
}

/// What a namespace's reader tells the engine (about the backend session `sid`, for
/// messages and ends: a namespace left and joined again has a new one).
enum Event {
    Opened(Result<Arc<Session>, OpenError>),
    Message(Arc<str>, Arc<Message>),
    Gone(Arc<str>, u16),
}

enum Ns {
    /// Its backend session is being opened.
    Opening,
    Open(Joined),
}

struct Joined {
    session: Arc<Session>,
    uplink: Option<mpsc::Sender<Outgoing>>,
    /// A backend packet waiting for its attachments.
    outgoing: Option<Held>,
}

/// A backend packet waiting for its attachments: its kind, ack id and JSON, how many are still
/// to come, and those that came.
struct Held {
    kind: Kind,
    id: Option<u64>,
    data: String,
    left: usize,
    parts: Vec<Bytes>,
    /// Bytes of the parts held: at most `max_message` for all of them.
    bytes: usize,
}

/// A client packet waiting for its attachments.
struct Incoming {
    nsp: String,
    text: String,
    left: usize,
    parts: Vec<Bytes>,
    /// Bytes of the parts held: at most `max_message` for all of them.
    bytes: usize,
}

struct Engine {
    site: SessionSite,
    opts: SocketIo,
    req: RequestHeader,
    client: ClientInfo,
    transport: &'static str,
    protocol: Protocol,
    deadline: Duration,
    /// The engine's own session: its outbox goes to the client.
    session: Arc<Session>,
    namespaces: HashMap<String, Ns>,
    /// Namespaces the backend disconnected (and the client has not joined again): packets the
    /// client sent before it saw the DISCONNECT are dropped, not taken as a protocol error.
    /// Listed namespaces only, so bounded.
    parted: HashSet<String>,
    incoming: Option<Incoming>,
    /// The bytes of attachments held for one packet, either way: the route's `max_message`.
    max_held: usize,
    events: mpsc::Sender<(String, Event)>,
    /// A namespace was joined (protocol 5 must join one within `connect_timeout`).
    joined_once: bool,
}

/// How a connection ends: the code its Engine.IO session is told.
struct End(u16, &'static str);

impl Engine {
    async fn run(
        mut self,
        mut uplink: mpsc::Receiver<Outgoing>,
        mut from_namespaces: mpsc::Receiver<(String, Event)>,
    ) {
        if self.protocol == Protocol::V4 {
            // Socket.IO 2 clients are joined to `/` by the server.
            self.join("/", None);
        }
        let connect_by = tokio::time::Instant::now() + self.opts.connect_timeout;
        let session = self.session.clone();
        let ended = session.ended_by_client();
        tokio::pin!(ended);
        let end = loop {
            let step = tokio::select! {
                m = uplink.recv() => match m {
                    None => break None,
                    Some(out) => {
                        let step = self.on_client(out.payload, out.binary).await;
                        if let Some(done) = out.done {
                            let _ = done.send(Ok(()));
                        }
                        step
                    }
                },
                Some((nsp, e)) = from_namespaces.recv() => self.on_namespace(nsp, e).await,
                _ = tokio::time::sleep_until(connect_by), if self.protocol == Protocol::V5 && !self.joined_once => {
                    Err(End(1000, "no namespace joined within connect_timeout"))
                }
                _ = &mut ended => break None,
            };
            if let Err(end) = step {
                break Some(end);
            }
        };
        for (_, ns) in self.namespaces.drain() {
            if let Ns::Open(j) = ns {
                j.session.close(EndReason::Client);
            }
        }
        let (code, reason) = match end {
            Some(End(code, reason)) => (code, reason),
            None => (1000, "the client left"),
        };
        self.session.outbox.end(Gone {
            code,
            reason: reason.into(),
        });
    }

    /// Sends a packet (and its attachments) to the client.
    async fn emit(&self, text: String, attachments: Vec<Bytes>) {
        self.session
            .outbox
            .push(None, Bytes::from(text), false)
            .await;
        for a in attachments {
            self.session.outbox.push(None, a, true).await;
        }
    }

    async fn on_client(&mut self, payload: Bytes, binary: bool) -> Result<(), End> {
        if let Some(inc) = &mut self.incoming {
            if !binary {
                return Err(End(1002, "a text packet where an attachment was due"));
            }
            inc.bytes += payload.len();
            if inc.bytes > self.max_held {
                return Err(End(1009, "a packet's attachments over max_message"));
            }
            inc.parts.push(payload);
            inc.left -= 1;
            if inc.left > 0 {
                return Ok(());
            }
            let Incoming {
                nsp, text, parts, ..
            } = self.incoming.take().expect("checked above");
            return self.send_backend(&nsp, text, parts).await;
        }
        if binary {
            return Err(End(1002, "an attachment no packet announced"));
        }
        let text = std::str::from_utf8(&payload).map_err(|_| End(1002, "not UTF-8"))?;
        let p = sio::decode(text).map_err(|sio::Invalid(why)| End(1002, why))?;
        match p.kind {
            Kind::Connect => {
                let auth = match (self.protocol, &p.data, &p.query) {
                    (Protocol::V5, Some(d), _) => Some(d.clone()),
                    (Protocol::V4, _, Some(q)) => Some(query_object(q)),
                    _ => None,
                };
                if !self.opts.namespaces.contains(&p.nsp) {
                    let refusal =
                        sio::connect_error(self.protocol, &p.nsp, "Invalid namespace", None);
                    self.emit(refusal, Vec::new()).await;
                    return Ok(());
                }
                match self.namespaces.get(&p.nsp) {
                    // Joined already (or joining): said again, nothing reopened.
                    Some(Ns::Open(j)) => {
                        let again = sio::connected(self.protocol, &p.nsp, &j.session.id);
                        self.emit(again, Vec::new()).await;
                    }
                    Some(Ns::Opening) => {}
                    None => {
                        self.parted.remove(&p.nsp);
                        self.join(&p.nsp, auth);
                    }
                }
                Ok(())
            }
            Kind::Disconnect => {
                if let Some(Ns::Open(j)) = self.namespaces.remove(&p.nsp) {
                    j.session.close(EndReason::Client);
                }
                Ok(())
            }
            Kind::Event | Kind::Ack | Kind::BinaryEvent | Kind::BinaryAck => {
                // One for a namespace the backend just left is dropped (`send_backend` finds it
                // gone), with its attachments.
                let joined = matches!(self.namespaces.get(&p.nsp), Some(Ns::Open(_)));
                if !joined && !self.parted.contains(&p.nsp) {
                    return Err(End(1002, "a packet for a namespace not joined"));
                }
                let text = backend_text(&p).map_err(|sio::Invalid(why)| End(1002, why))?;
                if p.attachments > 0 {
                    self.incoming = Some(Incoming {
                        nsp: p.nsp,
                        text,
                        left: p.attachments,
                        parts: Vec::with_capacity(p.attachments),
                        bytes: 0,
                    });
                    return Ok(());
                }
                self.send_backend(&p.nsp, text, Vec::new()).await
            }
            Kind::ConnectError => Err(End(1002, "a CONNECT_ERROR from a client")),
        }
    }

    /// A client packet's backend messages: its text, then its attachments.
    async fn send_backend(
        &mut self,
        nsp: &str,
        text: String,
        parts: Vec<Bytes>,
    ) -> Result<(), End> {
        let Some(Ns::Open(j)) = self.namespaces.get(nsp) else {
            return Ok(());
        };
        let Some(uplink) = &j.uplink else {
            return Ok(());
        };
        let messages =
            std::iter::once((Bytes::from(text), false)).chain(parts.into_iter().map(|p| (p, true)));
        for (payload, binary) in messages {
            // A namespace whose backend session ended takes nothing more; its end is on its way.
            if uplink
                .send(Outgoing {
                    payload,
                    binary,
                    done: None,
                })
                .await
                .is_err()
            {
                break;
            }
        }
        Ok(())
    }

    /// Starts opening namespace `nsp`'s backend session.
    fn join(&mut self, nsp: &str, auth: Option<String>) {
        self.namespaces.insert(nsp.to_owned(), Ns::Opening);
        let target = SessionTarget {
            suffix: if nsp == "/" {
                String::new()
            } else {
                nsp.to_owned()
            },
            headers: auth
                .and_then(|a| serde_json::from_str::<Value>(&a).ok())
                .and_then(|a| http::HeaderValue::from_str(&ascii_json(&a.to_string())).ok())
                .map(|v| vec![(http::HeaderName::from_static(AUTH_HEADER), v)])
                .unwrap_or_default(),
        };
        let (site, req, client, transport, deadline) = (
            self.site.clone(),
            self.req.clone(),
            self.client.clone(),
            self.transport,
            self.deadline,
        );
        let events = self.events.clone();
        let nsp = nsp.to_owned();
        tokio::spawn(async move {
            let opened = site
                .open(&req, &client, transport, false, Some(&target))
                .await;
            let session = opened.as_ref().ok().cloned();
            if events
                .send((nsp.clone(), Event::Opened(opened)))
                .await
                .is_err()
            {
                if let Some(s) = session {
                    s.close(EndReason::Client);
                }
                return;
            }
            let Some(s) = session else { return };
            // The namespace's reader: what its backend sends, to the engine.
            let sid = s.id.clone();
            let mut consumer = Consumer::for_session(s.clone(), s.attach(), transport, 0, deadline);
            loop {
                let e = match consumer.next().await {
                    Delivery::Message(m) => Event::Message(sid.clone(), m),
                    Delivery::Dropped(_) => continue,
                    Delivery::BackendGone(g) => Event::Gone(sid.clone(), g.code),
                    Delivery::TooSlow => Event::Gone(sid.clone(), 1008),
                    Delivery::Closed => Event::Gone(sid.clone(), 1001),
                };
                let last = matches!(e, Event::Gone(..));
                if events.send((nsp.clone(), e)).await.is_err() || last {
                    return;
                }
            }
        });
    }

    async fn on_namespace(&mut self, nsp: String, e: Event) -> Result<(), End> {
        match e {
            Event::Opened(Ok(session)) => {
                if !matches!(self.namespaces.get(&nsp), Some(Ns::Opening)) {
                    session.close(EndReason::Client);
                    return Ok(());
                }
                self.joined_once = true;
                let answer = sio::connected(self.protocol, &nsp, &session.id);
                self.namespaces.insert(
                    nsp,
                    Ns::Open(Joined {
                        uplink: session.uplink(),
                        session,
                        outgoing: None,
                    }),
                );
                self.emit(answer, Vec::new()).await;
                Ok(())
            }
            Event::Opened(Err(why)) => {
                self.namespaces.remove(&nsp);
                let (message, data) = match why {
                    OpenError::Refused(status) => (
                        format!("backend refused: {status}"),
                        Some(serde_json::json!({ "status": status })),
                    ),
                    OpenError::Full(_) | OpenError::PerAddress(_) => {
                        ("server full: try again later".to_owned(), None)
                    }
                    OpenError::Unreachable(_) => ("backend unreachable".to_owned(), None),
                };
                let refusal = sio::connect_error(self.protocol, &nsp, &message, data.as_ref());
                self.emit(refusal, Vec::new()).await;
                Ok(())
            }
            Event::Message(sid, m) => {
                let out = match self.namespaces.get_mut(&nsp) {
                    Some(Ns::Open(j)) if j.session.id == sid => {
                        translate(&nsp, j, &m, self.max_held)
                    }
                    _ => None,
                };
                if let Some((text, parts)) = out {
                    self.emit(text, parts).await;
                }
                Ok(())
            }
            Event::Gone(sid, code) => {
                // The end of a session the client left already says nothing.
                if !matches!(self.namespaces.get(&nsp), Some(Ns::Open(j)) if j.session.id == sid) {
                    return Ok(());
                }
                self.namespaces.remove(&nsp);
                // A deliberate close is the namespace's DISCONNECT (the client does not come
                // back); a lost backend drops the whole connection (the client reconnects).
                if code == 1000 || (3000..=4999).contains(&code) {
                    let bye = sio::encode(Kind::Disconnect, 0, &nsp, None, None);
                    self.parted.insert(nsp);
                    self.emit(bye, Vec::new()).await;
                    Ok(())
                } else {
                    Err(End(1011, "a namespace's backend connection was lost"))
                }
            }
        }
    }
}

/// A shared feed's message as the Socket.IO packet (and attachment) every client on `/` gets,
/// by the mapping. Each message stands alone: a feed's JSON placeholders are not followed up.
pub fn feed_packet(m: &Message) -> (String, Option<Bytes>) {
    if m.binary {
        let data = format!("[\"message\",{}]", sio::placeholder(0));
        return (
            sio::encode(Kind::BinaryEvent, 1, "/", None, Some(&data)),
            Some(m.payload.clone()),
        );
    }
    let (kind, id, data, _) = map_text(&String::from_utf8_lossy(&m.payload));
    (sio::encode(kind, 0, "/", id, Some(&data)), None)
}

/// What a client of a shared feed sent, by the mapping: a packet for the backend's `post:`
/// (an event or an ack, as text), an answer for the client (its CONNECT's), or nothing.
pub enum FromClient {
    ToBackend(String),
    Answer(String),
    Nothing,
}

/// A text packet from a client of a shared feed (only `/` is served there).
pub fn feed_client_packet(protocol: Protocol, text: &str) -> Result<FromClient, sio::Invalid> {
    let p = sio::decode(text)?;
    Ok(match p.kind {
        Kind::Connect if p.nsp == "/" => {
            FromClient::Answer(sio::connected(protocol, "/", &super::engineio::new_sid()))
        }
        Kind::Connect => FromClient::Answer(sio::connect_error(
            protocol,
            &p.nsp,
            "Invalid namespace",
            None,
        )),
        Kind::Disconnect => FromClient::Nothing,
        Kind::Event | Kind::BinaryEvent | Kind::Ack | Kind::BinaryAck if p.nsp == "/" => {
            FromClient::ToBackend(backend_text(&p)?)
        }
        _ => return Err(sio::Invalid("a packet for a namespace not joined")),
    })
}

/// A client's event or ack as the backend's text (its attachments follow as they came).
fn backend_text(p: &sio::Packet) -> Result<String, sio::Invalid> {
    let data = p.data.as_deref().unwrap_or("[]");
    Ok(match (p.kind, p.id) {
        (Kind::Event | Kind::BinaryEvent, None) => data.to_owned(),
        (Kind::Event | Kind::BinaryEvent, Some(id)) => format!("{{\"event\":{data},\"id\":{id}}}"),
        (_, Some(id)) => format!("{{\"ack\":{id},\"args\":{data}}}"),
        (_, None) => return Err(sio::Invalid("an ack without its id")),
    })
}

/// A backend message as the client's packet (with its attachments), by the mapping; None
/// while the attachments of a packet are still coming.
fn translate(
    nsp: &str,
    j: &mut Joined,
    m: &Message,
    max_held: usize,
) -> Option<(String, Vec<Bytes>)> {
    if let Some(held) = &mut j.outgoing {
        if m.binary {
            held.bytes += m.payload.len();
            if held.bytes > max_held {
                // Attachments past max_message: the packet is dropped, as an oversize message.
                j.outgoing = None;
                return None;
            }
            held.parts.push(m.payload.clone());
            held.left -= 1;
            if held.left > 0 {
                return None;
            }
            let Held {
                kind,
                id,
                data,
                parts,
                ..
            } = j.outgoing.take().expect("checked above");
            return Some((sio::encode(kind, parts.len(), nsp, id, Some(&data)), parts));
        }
        // A text where an attachment was due: the held packet is dropped.
        j.outgoing = None;
    }
    if m.binary {
        let data = format!("[\"message\",{}]", sio::placeholder(0));
        return Some((
            sio::encode(Kind::BinaryEvent, 1, nsp, None, Some(&data)),
            vec![m.payload.clone()],
        ));
    }
    let (kind, id, data, json) = map_text(&String::from_utf8_lossy(&m.payload));
    let attachments = json.as_ref().and_then(sio::placeholders).unwrap_or(0);
    if attachments > 0 && attachments <= sio::MAX_ATTACHMENTS {
        let binary_kind = if kind == Kind::Ack {
            Kind::BinaryAck
        } else {
            Kind::BinaryEvent
        };
        j.outgoing = Some(Held {
            kind: binary_kind,
            id,
            data,
            left: attachments,
            parts: Vec::new(),
            bytes: 0,
        });
        return None;
    }
    Some((sio::encode(kind, 0, nsp, id, Some(&data)), Vec::new()))
}

/// A backend's text by the mapping: what the backend meant (an event, an event with an ack id,
/// an ack, or anything else as the event `message`), its ack id, the packet's JSON as the
/// backend wrote it, and that JSON parsed (to find attachments).
fn map_text(text: &str) -> (Kind, Option<u64>, String, Option<Value>) {
    let named =
        |v: &Value| matches!(v, Value::Array(a) if matches!(a.first(), Some(Value::String(_))));
    if let Ok(v @ Value::Array(_)) = serde_json::from_str::<Value>(text) {
        if named(&v) {
            return (Kind::Event, None, text.to_owned(), Some(v));
        }
    } else if let Ok(e) = serde_json::from_str::<EventForm>(text) {
        if let Ok(v) = serde_json::from_str::<Value>(e.event.get()) {
            if named(&v) {
                return (Kind::Event, Some(e.id), e.event.get().to_owned(), Some(v));
            }
        }
    } else if let Ok(a) = serde_json::from_str::<AckForm>(text) {
        if let Ok(v @ Value::Array(_)) = serde_json::from_str::<Value>(a.args.get()) {
            return (Kind::Ack, Some(a.ack), a.args.get().to_owned(), Some(v));
        }
    }
    message_event(text)
}

/// `{"event":[...],"id":M}` from a backend: an event that asks for the client's ack.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventForm<'a> {
    #[serde(borrow)]
    event: &'a serde_json::value::RawValue,
    id: u64,
}

/// `{"ack":N,"args":[...]}` from a backend: its answer to the client's event N.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AckForm<'a> {
    ack: u64,
    #[serde(borrow)]
    args: &'a serde_json::value::RawValue,
}

/// Any other text: the event `message` with that text.
fn message_event(text: &str) -> (Kind, Option<u64>, String, Option<Value>) {
    (
        Kind::Event,
        None,
        format!("[\"message\",{}]", sio::json_string(text)),
        None,
    )
}

/// Protocol 4's CONNECT query (`token=x&a=b`) as the auth object (`{"token":"x","a":"b"}`).
fn query_object(q: &str) -> String {
    let mut o = serde_json::Map::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = String::from_utf8_lossy(&crate::wire::http::form_decode(k.as_bytes())).into_owned();
        let v = String::from_utf8_lossy(&crate::wire::http::form_decode(v.as_bytes())).into_owned();
        o.insert(k, Value::String(v));
    }
    Value::Object(o).to_string()
}

/// JSON text with every non-ASCII character `\u`-escaped, so that it fits in a header.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_headers_are_ascii_and_queries_become_objects() {
        assert_eq!(
            ascii_json("{\"n\":\"Zoë 😀\"}"),
            "{\"n\":\"Zo\\u00eb \\ud83d\\ude00\"}"
        );
        assert_eq!(
            query_object("token=a%20b&x="),
            "{\"token\":\"a b\",\"x\":\"\"}"
        );
    }
}
