//! The HTTP listener: accept connections and serve the router on each, within limits.
//!
//! `axum::serve` has neither a cap on connections nor a timer for hyper's header-read
//! timeout, so a client that opens connections and sends nothing (or a header a byte a
//! minute) holds a file descriptor for ever: the process has 20,000, shared with the MQTT
//! broker's connections. Here:
//!
//! * at most [`Limits::max_connections`] connections at once; one more gets an immediate
//!   `503` with `Retry-After` and is closed, rather than waiting unseen in the backlog;
//! * a request's head must arrive within [`Limits::header_timeout`]. hyper's timer starts
//!   when it waits for a head, which includes a kept-alive connection waiting for its next
//!   request, so the same limit closes idle connections;
//! * bodies are read by the handlers, each with its own size limit and a timeout
//!   (`http/agent.rs`), after the request is authenticated;
//! * with TLS (`tls.rs`), the handshake runs in the connection's task, under the same
//!   connection cap and within its own timeout.

use axum::Router;
use axum::extract::ConnectInfo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use crate::config::HttpLimits as Limits;

/// What a connection over the cap is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\n\
content-length: 85\r\nconnection: close\r\n\r\n\
{\"error\":{\"code\":\"busy\",\"message\":\"too many connections to this server; try again\"}}\n";

/// How long in-flight requests may take to finish once shutdown begins.
const DRAIN: Duration = Duration::from_secs(5);

/// Serve `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Arc<crate::tls::Tls>>,
    proxies: Arc<[ipnet::IpNet]>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "HTTP connection over the cap: answered 503");
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (http, watcher, tls, header_timeout) =
            (http.clone(), graceful.watcher(), tls.clone(), limits.header_timeout);
        let (app, proxies) = (app.clone(), proxies.clone());
        tokio::spawn(async move {
            let (stream, client): (Box<dyn crate::tls::Io>, _) = match &tls {
                None => (Box::new(stream), None),
                Some(tls) => match tls.accept_http(stream, header_timeout).await {
                    Ok(a) => (a.stream, a.client),
                    Err(e) => {
                        tracing::debug!(%peer, "TLS handshake failed: {e}");
                        return;
                    }
                },
            };
            // Every request of the connection carries its peer, and the device credential
            // of its client certificate if it presented one, or, from a trusted proxy that
            // terminated TLS, the one the proxy forwards.
            let trusted = proxies.iter().any(|p| p.contains(&peer.ip()));
            let service = tower::ServiceExt::map_request(app, move |mut r: axum::extract::Request<_>| {
                // Behind a trusted proxy the client is who it says (the last address of
                // `X-Forwarded-For`, the one it appended); anyone else's header is not read.
                let from = match trusted {
                    true => forwarded_for(r.headers()).map_or(peer, |ip| std::net::SocketAddr::new(ip, 0)),
                    false => peer,
                };
                r.extensions_mut().insert(ConnectInfo(from));
                // A proxy's own certificate, if it has one, is not a device's.
                let cert = match trusted {
                    true => crate::tls::forwarded_certificate(r.headers()).or_else(|| client.clone()),
                    false => client.clone(),
                };
                if let Some(c) = cert {
                    r.extensions_mut().insert(c);
                }
                r
            });
            let connection = http.serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(service),
            );
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, "HTTP connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("HTTP connections still open {} s after shutdown began: closed", DRAIN.as_secs());
    }
    Ok(())
}

/// The address a proxy appended to `X-Forwarded-For`: the last one of the last such header.
fn forwarded_for(headers: &axum::http::HeaderMap) -> Option<std::net::IpAddr> {
    let last = headers.get_all("x-forwarded-for").iter().next_back()?.to_str().ok()?;
    last.rsplit(',').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(super::BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().parse().unwrap();
        assert_eq!(body.len(), length);
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[test]
    fn the_client_is_the_address_the_proxy_appended() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(super::forwarded_for(&h), None);
        h.append("x-forwarded-for", "203.0.113.9, 198.51.100.7".parse().unwrap());
        assert_eq!(super::forwarded_for(&h), Some("198.51.100.7".parse().unwrap()));
        // A client's own header comes first; the proxy's is the last.
        h.append("x-forwarded-for", "2001:db8::5".parse().unwrap());
        assert_eq!(super::forwarded_for(&h), Some("2001:db8::5".parse().unwrap()));
        h.append("x-forwarded-for", "not an address".parse().unwrap());
        assert_eq!(super::forwarded_for(&h), None);
    }
}
