//! The client side of one request, as the transports see it. Two kinds implement it:
//!
//! - pingora's proxy [`Session`], for whatever pingora parsed (HTTP/2, requests with a body,
//!   pass-through routes, and every request the lean path does not take);
//! - the edge's own HTTP/1 connection (`edge::http1::Connection`), for the bridged GETs that
//!   turn into long-lived streams (SSE, terminated WebSocket, long-poll). It holds a connection
//!   for a fraction of the memory pingora's per-request state machine does (see `edge`).
//!
//! The methods mirror pingora's so a transport reads the same over either. Transports call a
//! request's `Downstream` `down`; "session" always means a bridged client session
//! (`bridge::session`), never the HTTP exchange. [`Respond`] renders a
//! policy refusal on either.

use crate::access_log::{Notes, StreamEnd};
use crate::policy::reject::Reject;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

pub trait Downstream: Send {
    fn req_header(&self) -> &RequestHeader;

    /// The client's address, when it is an IP one.
    fn client_ip(&self) -> Option<IpAddr>;

    /// The client came over TLS.
    fn is_tls(&self) -> bool;

    fn is_http2(&self) -> bool;

    /// Sends the response head. `end` means there is no body.
    fn write_response_header(
        &mut self,
        resp: Box<ResponseHeader>,
        end: bool,
    ) -> impl Future<Output = pingora::Result<()>> + Send;

    /// Sends a piece of the body (framed as the response head said), flushed; `end` finishes it.
    fn write_response_body(
        &mut self,
        body: Option<Bytes>,
        end: bool,
    ) -> impl Future<Output = pingora::Result<()>> + Send;

    /// Sends a whole answer: its head and a body of `Content-Length` bytes (one write where
    /// the connection allows).
    fn write_answer(
        &mut self,
        resp: Box<ResponseHeader>,
        body: Bytes,
    ) -> impl Future<Output = pingora::Result<()>> + Send {
        async move {
            self.write_response_header(resp, false).await?;
            self.write_response_body(Some(body), true).await
        }
    }

    /// Sends a whole answer built from fixed fields: `status` (one that has a body), `fields`,
    /// and `body` with its `Content-Length`. The lean connection writes it without building a
    /// response value.
    fn write_simple_answer(
        &mut self,
        status: u16,
        fields: &[(&'static str, &'static str)],
        body: Bytes,
    ) -> impl Future<Output = pingora::Result<()>> + Send {
        async move {
            let mut resp = ResponseHeader::build(status, Some(fields.len() + 1))?;
            for (name, value) in fields {
                resp.insert_header(*name, *value)?;
            }
            resp.insert_header("content-length", body.len().to_string())?;
            self.write_answer(Box::new(resp), body).await
        }
    }

    /// Sends several pieces as one piece of the body (one chunk, one write where the stream
    /// allows), flushed. The default joins them; a connection that can write vectored should.
    fn write_body_parts(
        &mut self,
        parts: &[Bytes],
    ) -> impl Future<Output = pingora::Result<()>> + Send {
        let joined = match parts {
            [one] => one.clone(),
            _ => {
                let mut all = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
                for p in parts {
                    all.extend_from_slice(p);
                }
                all.freeze()
            }
        };
        self.write_response_body(Some(joined), false)
    }

    /// The next piece of the request body, or after a `101`, the next bytes of the upgraded
    /// stream. `Ok(None)` at the end.
    fn read_request_body(&mut self) -> impl Future<Output = pingora::Result<Option<Bytes>>> + Send;

    /// With `no_body_expected`, waits until the client closes (an error) or sends something it
    /// should not have (`Ok`); used to notice a streaming client leave before the next write.
    fn read_body_or_idle(
        &mut self,
        no_body_expected: bool,
    ) -> impl Future<Output = pingora::Result<Option<Bytes>>> + Send;

    fn set_read_timeout(&mut self, timeout: Option<Duration>);

    fn set_write_timeout(&mut self, timeout: Option<Duration>);

    /// `None`: close the connection after this response.
    fn set_keepalive(&mut self, seconds: Option<u64>);

    /// The request head will not be read again (a stream is under way): a connection that
    /// can, frees it. A browser's head is a few KiB, held for as long as its stream lasts.
    fn release_request(&mut self) {}

    /// Where the access log's facts about this request are kept (a refusal's reason, what a
    /// stream carried); None where the connection keeps none (see [`WithNotes`]).
    fn notes(&mut self) -> Option<&mut Notes> {
        None
    }

    /// A stream ends: what it carried, for the access log.
    fn stream_ended(&mut self, end: StreamEnd) {
        if let Some(n) = self.notes() {
            n.stream_ended(end);
        }
    }
}

/// A downstream that keeps [`Notes`], around one that keeps none (pingora's `Session`, whose
/// per-request state is the proxy's context, out of a transport's reach).
pub struct WithNotes<'a, D> {
    pub down: &'a mut D,
    pub notes: Notes,
}

impl<'a, D: Downstream> WithNotes<'a, D> {
    pub fn new(down: &'a mut D) -> Self {
        Self {
            down,
            notes: Notes::default(),
        }
    }
}

impl<D: Downstream> Downstream for WithNotes<'_, D> {
    fn req_header(&self) -> &RequestHeader {
        self.down.req_header()
    }

    fn client_ip(&self) -> Option<IpAddr> {
        self.down.client_ip()
    }

    fn is_tls(&self) -> bool {
        self.down.is_tls()
    }

    fn is_http2(&self) -> bool {
        self.down.is_http2()
    }

    fn write_response_header(
        &mut self,
        resp: Box<ResponseHeader>,
        end: bool,
    ) -> impl Future<Output = pingora::Result<()>> + Send {
        self.down.write_response_header(resp, end)
    }

    fn write_response_body(
        &mut self,
        body: Option<Bytes>,
        end: bool,
    ) -> impl Future<Output = pingora::Result<()>> + Send {
        self.down.write_response_body(body, end)
    }

    fn write_answer(
        &mut self,
        resp: Box<ResponseHeader>,
        body: Bytes,
    ) -> impl Future<Output = pingora::Result<()>> + Send {
        self.down.write_answer(resp, body)
    }

    fn write_body_parts(
        &mut self,
        parts: &[Bytes],
    ) -> impl Future<Output = pingora::Result<()>> + Send {
        self.down.write_body_parts(parts)
    }

    fn read_request_body(&mut self) -> impl Future<Output = pingora::Result<Option<Bytes>>> + Send {
        self.down.read_request_body()
    }

    fn read_body_or_idle(
        &mut self,
        no_body_expected: bool,
    ) -> impl Future<Output = pingora::Result<Option<Bytes>>> + Send {
        self.down.read_body_or_idle(no_body_expected)
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.down.set_read_timeout(timeout)
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.down.set_write_timeout(timeout)
    }

    fn set_keepalive(&mut self, seconds: Option<u64>) {
        self.down.set_keepalive(seconds)
    }

    fn release_request(&mut self) {
        self.down.release_request()
    }

    fn notes(&mut self) -> Option<&mut Notes> {
        Some(&mut self.notes)
    }
}

impl Downstream for Session {
    fn req_header(&self) -> &RequestHeader {
        (**self).req_header()
    }

    fn client_ip(&self) -> Option<IpAddr> {
        self.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
    }

    fn is_tls(&self) -> bool {
        self.digest().is_some_and(|d| d.ssl_digest.is_some())
    }

    fn is_http2(&self) -> bool {
        (**self).is_http2()
    }

    fn write_response_header(
        &mut self,
        resp: Box<ResponseHeader>,
        end: bool,
    ) -> impl Future<Output = pingora::Result<()>> + Send {
        Session::write_response_header(self, resp, end)
    }

    fn write_response_body(
        &mut self,
        body: Option<Bytes>,
        end: bool,
    ) -> impl Future<Output = pingora::Result<()>> + Send {
        Session::write_response_body(self, body, end)
    }

    fn read_request_body(&mut self) -> impl Future<Output = pingora::Result<Option<Bytes>>> + Send {
        (**self).read_request_body()
    }

    fn read_body_or_idle(
        &mut self,
        no_body_expected: bool,
    ) -> impl Future<Output = pingora::Result<Option<Bytes>>> + Send {
        (**self).read_body_or_idle(no_body_expected)
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        (**self).set_read_timeout(timeout)
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        (**self).set_write_timeout(timeout)
    }

    fn set_keepalive(&mut self, seconds: Option<u64>) {
        (**self).set_keepalive(seconds)
    }
}

/// Renders a refusal on the socket that owns the request: counted, logged once per route and
/// reason, answered, and the connection closes afterwards.
pub trait Respond {
    fn send<D: Downstream>(
        self,
        down: &mut D,
        route: &str,
    ) -> impl Future<Output = pingora::Result<()>> + Send;
}

impl Respond for Reject {
    async fn send<D: Downstream>(self, down: &mut D, route: &str) -> pingora::Result<()> {
        self.count(route);
        if let Some(n) = down.notes() {
            n.refused = Some(self.reason);
        }
        let (resp, body) = self.response()?;
        down.set_keepalive(None);
        down.write_answer(Box::new(resp), body).await
    }
}

/// A request another instance of the cluster relayed here whole (an Engine.IO poll or send for
/// a session held here): served as if its client were connected, its answer kept to be relayed
/// back. Its client cannot be seen to leave (the relaying instance holds that connection).
pub struct Relayed {
    req: RequestHeader,
    client_ip: Option<IpAddr>,
    tls: bool,
    body: Option<Bytes>,
    /// The answer: its head, and its body so far.
    pub head: Option<Box<ResponseHeader>>,
    pub out: BytesMut,
}

impl Relayed {
    pub fn new(req: RequestHeader, client_ip: Option<IpAddr>, tls: bool, body: Bytes) -> Self {
        Self {
            req,
            client_ip,
            tls,
            body: (!body.is_empty()).then_some(body),
            head: None,
            out: BytesMut::new(),
        }
    }
}

impl Downstream for Relayed {
    fn req_header(&self) -> &RequestHeader {
        &self.req
    }

    fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }

    fn is_tls(&self) -> bool {
        self.tls
    }

    fn is_http2(&self) -> bool {
        false
    }

    fn write_response_header(
        &mut self,
        resp: Box<ResponseHeader>,
        _end: bool,
    ) -> impl Future<Output = pingora::Result<()>> + Send {
        self.head = Some(resp);
        std::future::ready(Ok(()))
    }

    fn write_response_body(
        &mut self,
        body: Option<Bytes>,
        _end: bool,
    ) -> impl Future<Output = pingora::Result<()>> + Send {
        if let Some(b) = body {
            self.out.extend_from_slice(&b);
        }
        std::future::ready(Ok(()))
    }

    fn read_request_body(&mut self) -> impl Future<Output = pingora::Result<Option<Bytes>>> + Send {
        std::future::ready(Ok(self.body.take()))
    }

    fn read_body_or_idle(
        &mut self,
        _no_body_expected: bool,
    ) -> impl Future<Output = pingora::Result<Option<Bytes>>> + Send {
        std::future::pending()
    }

    fn set_read_timeout(&mut self, _timeout: Option<Duration>) {}

    fn set_write_timeout(&mut self, _timeout: Option<Duration>) {}

    fn set_keepalive(&mut self, _seconds: Option<u64>) {}
}
