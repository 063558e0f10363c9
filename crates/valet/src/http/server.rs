//! The HTTP/1.1 connection loop: accepting, per-connection timeouts and graceful shutdown
//! with a drain deadline.
//!
//! `axum::serve` (axum 0.8) sets no timer on hyper, so a client that never finishes its
//! request can hold a connection, and a graceful shutdown, open forever. This loop drives
//! hyper's HTTP/1.1 connections itself, with a header read timeout, a timeout on the whole
//! request and a deadline after which shutdown closes the connections that remain.
//!
//! NOTE: no timeout covers writing a response. A client that stops reading while the
//! socket buffers are full keeps its connection until it reads again, or until the drain
//! deadline at shutdown. A write timeout on the socket would close that gap.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::body::{Bytes, HttpBody};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tower::ServiceExt;

use super::ApiError;

/// Maximum time for a client to send a request's headers, counted from the moment the
/// connection waits for them: on connect and again after each response on a keep-alive
/// connection.
///
/// Hyper 1.13 has no separate idle timeout for HTTP/1.1, but its header read timer also
/// runs while a keep-alive connection waits for its next request. So this timeout closes
/// idle connections too.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Maximum size of a request head, the request line and header lines together, in bytes.
/// A larger head gets hyper's empty 431 and the connection is closed.
///
/// Without this limit, hyper 1.13 checks its read buffer size (about 400 KiB) only while a
/// head is incomplete, so a head that completes within one read may be larger.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Maximum time from the end of a request's headers until its response is ready. It covers
/// the handler's work and reading the body, because handlers read the body before they
/// respond. A request that exceeds it gets a 408 problem with code `request_timeout`, and
/// the connection is closed.
///
/// A handler that responds without reading the body leaves no way to trickle it, because
/// hyper then closes the connection after the response instead of draining the body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Maximum time that in-flight requests get to finish after the shutdown signal. The
/// connections still open at this deadline are closed without a response.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after an accept error that is not about one connection, such as running out of
/// file descriptors, so the loop does not spin while the cause lasts.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets
/// in-flight requests finish for up to [`DRAIN_TIMEOUT`] and closes what is left.
///
/// With `tls`, each connection first completes a TLS handshake, which must finish within
/// [`HEADER_READ_TIMEOUT`].
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                report_panic(finished);
                continue;
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                let builder = builder.clone();
                let router = router.clone();
                let draining = drain_rx.clone();
                match tls.clone() {
                    None => {
                        connections
                            .spawn(serve_connection(builder, stream, peer, router, draining));
                    }
                    Some(acceptor) => {
                        connections.spawn(async move {
                            let Some(stream) = handshake(&acceptor, stream, peer).await else {
                                return;
                            };
                            serve_connection(builder, stream, peer, router, draining).await;
                        });
                    }
                }
            }
            Err(err) if is_connection_error(&err) => {}
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    retry_in_ms = ACCEPT_RETRY_DELAY.as_millis() as u64,
                    "failed to accept a connection"
                );
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_RETRY_DELAY) => {}
                }
            }
        }
    }

    // Closing the listening socket first makes new connections fail at once, so clients
    // and load balancers can try another server while the open connections drain.
    drop(listener);
    let _ = drain_tx.send(true);
    drain(connections).await;
}

/// Waits up to [`DRAIN_TIMEOUT`] for every connection task to finish, then aborts the rest.
async fn drain(mut connections: JoinSet<()>) {
    while let Some(finished) = connections.try_join_next() {
        report_panic(finished);
    }
    tracing::info!(
        connections = connections.len(),
        drain_timeout_seconds = DRAIN_TIMEOUT.as_secs(),
        "stopped accepting connections; draining open connections"
    );

    let all_finished = async {
        while let Some(finished) = connections.join_next().await {
            report_panic(finished);
        }
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, all_finished)
        .await
        .is_ok()
    {
        tracing::info!("all connections closed");
        return;
    }

    // A task that finished just at the deadline is not counted as cut.
    while let Some(finished) = connections.try_join_next() {
        report_panic(finished);
    }
    let cut = connections.len();
    connections.shutdown().await;
    tracing::warn!(
        connections = cut,
        drain_timeout_seconds = DRAIN_TIMEOUT.as_secs(),
        "closed connections still open at the drain deadline"
    );
}

/// Completes the TLS handshake on `stream`, or returns `None` after logging why it failed.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "TLS handshake failed");
            None
        }
        Err(_elapsed) => {
            tracing::debug!(
                %peer,
                timeout_seconds = HEADER_READ_TIMEOUT.as_secs(),
                "closed a connection whose TLS handshake did not finish in time"
            );
            None
        }
    }
}

/// Serves HTTP/1.1 requests on one connection until the client or a timeout closes it,
/// and ends it gracefully once `draining` turns true.
async fn serve_connection<S>(
    builder: http1::Builder,
    stream: S,
    peer: SocketAddr,
    router: Router,
    mut draining: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let router = router.clone();
        async move {
            let mut request = request;
            // The throttling middleware reads the peer's address from here.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            Ok::<_, Infallible>(respond_within(REQUEST_TIMEOUT, router, request).await)
        }
    });
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));

    let result = tokio::select! {
        result = connection.as_mut() => result,
        // The value changes only once, to true. An error means that the sender is gone,
        // which happens only after the drain, so ending the connection is right either way.
        _ = draining.changed() => {
            // Hyper closes an idle connection at once. A connection in the middle of a
            // request ends after that request's response, or earlier through a timeout.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    let Err(err) = result else {
        return;
    };

    if err.is_timeout() {
        tracing::debug!(
            %peer,
            timeout_seconds = HEADER_READ_TIMEOUT.as_secs(),
            "closed a connection whose request headers did not arrive in time"
        );
    } else {
        tracing::debug!(%peer, error = %err, "connection closed with an error");
    }
}

/// Runs `request` through `router` and returns its response, or a 408 problem if the
/// response is not ready within `limit`.
async fn respond_within<B>(limit: Duration, router: Router, request: hyper::Request<B>) -> Response
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let method = request.method().clone();
    match tokio::time::timeout(limit, router.oneshot(request.map(axum::body::Body::new))).await {
        Ok(Ok(response)) => response,
        Ok(Err(infallible)) => match infallible {},
        Err(_elapsed) => {
            tracing::debug!(
                %method,
                timeout_seconds = limit.as_secs_f64(),
                "request timed out; returning 408"
            );
            request_timeout(limit)
        }
    }
}

/// Builds the 408 problem for a request that did not complete within `limit`.
fn request_timeout(limit: Duration) -> Response {
    let detail = format!(
        "the request did not complete within {} seconds; send the headers and the whole \
         body without pauses, then retry on a new connection",
        limit.as_secs_f64()
    );
    let mut response =
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", detail).into_response();
    // RFC 7231, section 6.5.7: a server that sends 408 should send the `close` connection
    // option, because it has decided to close the connection rather than keep waiting. Here
    // part of the body may still be unread, so the connection cannot carry another request.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Returns whether an accept error concerns only the connection being accepted, so the
/// next accept can follow at once.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Logs a connection task that panicked. A panic in a handler unwinds through hyper into
/// the connection task, so it ends only that connection.
fn report_panic(finished: Result<(), JoinError>) {
    if let Err(err) = finished
        && err.is_panic()
    {
        tracing::error!(error = %err, "connection task panicked");
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::Request;
    use axum::routing::get;
    use serde_json::Value;

    use super::*;

    fn request(path: &str) -> Request {
        Request::get(path)
            .body(axum::body::Body::empty())
            .expect("request")
    }

    #[tokio::test]
    async fn respond_within_returns_408_problem() {
        let router = Router::new().route("/slow", get(std::future::pending::<&'static str>));

        let response = respond_within(Duration::from_millis(20), router, request("/slow")).await;

        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(headers[header::CONNECTION], "close");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let problem: Value = serde_json::from_slice(&body).expect("problem is JSON");
        assert_eq!(problem["code"], "request_timeout");
        assert_eq!(problem["status"], 408);
        assert_eq!(problem["title"], "Request Timeout");
    }

    #[tokio::test]
    async fn respond_within_passes_fast_response() {
        let router = Router::new().route("/fast", get(|| async { "done" }));

        let response = respond_within(Duration::from_secs(5), router, request("/fast")).await;

        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get(header::CONNECTION).is_none());
    }
}
