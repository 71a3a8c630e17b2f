//! Pure framing, at the bottom of the pipeline: no I/O, no routes, no config. Every byte format
//! the gateway speaks is encoded and decoded here, once, and tested here.
//!
//! - [`ws`]: WebSocket frames, close codes, the client-frame decoder, the opening handshake
//! - [`deflate`]: permessage-deflate without context: the negotiation, compress, bounded inflate
//! - [`frames`]: frame boundaries in a relayed WebSocket stream (headers only), for tunnels
//! - [`sse`]: the SSE event encoder and the WHATWG stream parser
//! - [`longpoll`]: the long-poll answer's JSON
//! - [`hixie76`]: the 2010 WebSocket draft SockJS still lists: its challenge and frames
//! - [`sockjs`]: the SockJS frames, transport wrappers, URLs, `/info` and `iframe.html`
//! - [`engineio`]: Engine.IO 3 and 4 packets, polling payloads, JSONP, the open packet
//! - [`socketio`]: Socket.IO 4 and 5 packets, their namespaces, acks and attachments
//! - [`http`]: HTTP/1 header tokens, query parameters, the request's host
//! - [`http1`]: HTTP/1.1 heads as a proxy forwards them: framing, hop-by-hop fields
//! - [`chunked`]: the chunked transfer coding, scanned in place
//! - [`time`]: dates as RFC 3339 and as civil (year, month, day)

pub mod chunked;
pub mod deflate;
pub mod engineio;
pub mod frames;
pub mod hixie76;
pub mod http;
pub mod http1;
pub mod longpoll;
pub mod socketio;
pub mod sockjs;
pub mod sse;
pub mod time;
pub mod ws;
