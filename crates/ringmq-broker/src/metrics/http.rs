//! `--metrics-listen`: a minimal HTTP/1.1 endpoint on shard 0 answering `GET /metrics` with
//! Prometheus text exposition. Each scrape asks every shard for a snapshot over the mesh, so
//! the probes themselves are never shared between cores.

use crate::shard::Shard;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::spawn_local;
use std::os::fd::{FromRawFd, RawFd};
use std::rc::Rc;
use tracing::warn;

/// Longest request head read; a scraper's request is a few hundred bytes.
const MAX_REQUEST_HEAD_BYTES: usize = 8192;

pub async fn serve(shard: Rc<Shard>, fd: RawFd) {
    // SAFETY: a listening socket bound by the main thread and owned by this task.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    loop {
        match listener.accept().await {
            Ok(stream) => {
                spawn_local(answer(shard.clone(), stream)).detach();
            }
            Err(e) => {
                warn!("metrics accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(shard: Rc<Shard>, mut stream: TcpStream) {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
        if head.len() > MAX_REQUEST_HEAD_BYTES {
            let _ = respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
            return;
        }
    }
    let request_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = std::str::from_utf8(request_line)
        .unwrap_or("")
        .split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        let _ = respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n",
        )
        .await;
    } else if path != "/metrics" {
        let _ = respond(&mut stream, "404 Not Found", "text/plain", "try /metrics\n").await;
    } else {
        let body = super::prometheus::render(shard.gather_snapshots().await);
        let _ = respond(
            &mut stream,
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            &body,
        )
        .await;
    }
    let _ = stream.close().await;
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}
