//! The HTTP floor for the poll benchmark: a server that answers the Android agent's poll
//! with the same bytes Drover answers, and does nothing else (no credential lookup, no
//! plugin, no database). The fleet simulator's `--mode floor` drives it with exactly the
//! requests of `--mode poll`, so the two runs side by side tell how much of a poll's cost
//! is HTTP itself on this machine (docs/BENCHMARKS.md).
//!
//!     cargo run --release --example http-floor -- --addr 127.0.0.1:18090
//!     cargo run --release --example fleet -- --mode floor --server http://127.0.0.1:18090 --devices 10000

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Answer Android polls with fixed bytes: the HTTP floor of the poll benchmark")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18090")]
    addr: std::net::SocketAddr,
}

/// What Drover answers the first poll of a device with one DEVICE_RING queued.
const OPERATION: &str = r#"[{"id":1,"code":"DEVICE_RING","type":"COMMAND","status":"IN_PROGRESS"}]"#;

async fn poll(headers: HeaderMap, body: Bytes) -> Response {
    // A device must still say who it is; the floor does not look it up.
    if !headers.get(header::AUTHORIZATION).is_some_and(|v| v.as_bytes().starts_with(b"Bearer ")) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    // Reporting results (a non-empty array) gets "nothing left"; an empty report gets the
    // operation, as from Drover.
    let answer = if body.as_ref() == b"[]" { OPERATION } else { "[]" };
    ([(header::CONTENT_TYPE, "application/json")], answer).into_response()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Anything else is answered 204 at once: the receiver of the webhook benchmark
    // (examples/bench/delivery.sh with WEBHOOK=1).
    let app = Router::new()
        .route("/agent/v1/{device_type}/devices/{id}/pending-operations", put(poll))
        .fallback(|| async { StatusCode::NO_CONTENT });
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    println!("http-floor listening on {}", args.addr);
    axum::serve(listener, app).await?;
    Ok(())
}
