//! Shoptet's header spelling on HTTP/1.1 (SPEC A3): `X-Request-ID`, `X-RateLimit-Bucket-Filling`,
//! `Retry-After`, `X-Shoptet-Deprecated`, `Sunset`, exactly so, because clients such as the
//! official PHP SDK look header names up case-sensitively.
//!
//! hyper 1 writes header names lower-case, or Title-Case with `title_case_headers` (which gives
//! `X-Request-Id`: wrong). Its only way to write any other spelling is its `HeaderCaseMap`
//! extension: the HTTP/1 parser records one in a message's extensions when
//! `preserve_header_case` is on, and the HTTP/1 encoder writes the names it holds whenever it finds
//! one in the extensions of the message it sends (a server's response or a client's request;
//! the sending side's own `preserve_header_case` setting does not matter). The type is
//! `pub(crate)`, so it cannot be built here; instead hyper's own client parses, once, a canned
//! response head carrying the spellings, and every HTTP/1.x answer gets a copy of the extensions
//! it recorded. Names the map does not hold stay lower-case.

use bytes::Bytes;
use http::{Extensions, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The head hyper parses: each name once, spelled as Shoptet spells it. `content-length` frames
/// it and is recorded lower-case, which is what hyper writes anyway.
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
X-Request-ID: x\r\n\
X-RateLimit-Bucket-Filling: 0/0\r\n\
Retry-After: 0\r\n\
X-Shoptet-Deprecated: x\r\n\
Sunset: x\r\n\
content-length: 0\r\n\r\n";

/// Extensions that make hyper write Shoptet's spellings; empty if hyper recorded nothing (then
/// the names go out lower-case, and `tests/sim_api.rs` says so).
pub(crate) async fn shoptet_spelling() -> Extensions {
    let (client, mut server) = tokio::io::duplex(4096);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(client))
        .await
    else {
        return Extensions::new();
    };
    // The connection task ends when `sender` and the duplex are dropped below.
    tokio::spawn(conn);
    // The answer goes out once the request is in: hyper's client refuses bytes that come
    // before it asked.
    let peer = async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match server.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = server.write_all(HEAD).await;
        // Held open until the answer is read, so hyper does not see an early EOF.
        let _ = server.read(&mut buf).await;
    };
    tokio::spawn(peer);
    let Ok(req) = Request::get("/").body(Empty::new()) else {
        return Extensions::new();
    };
    match sender.send_request(req).await {
        Ok(resp) => resp.into_parts().0.extensions,
        Err(_) => Extensions::new(),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn hyper_records_the_spellings() {
        assert!(!super::shoptet_spelling().await.is_empty());
    }
}
