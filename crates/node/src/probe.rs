//! `routerd probe --url http://host:port/path`: a minimal HTTP/1.0 GET for
//! container health checks (the runtime image has no shell or curl).
//! Exit code 0 on status 200, 1 on any other status, 2 when unreachable.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub async fn probe(url: &str, timeout: Duration) -> i32 {
    match tokio::time::timeout(timeout, get(url)).await {
        Ok(Ok((200, _))) => 0,
        Ok(Ok((status, body))) => {
            eprintln!("probe: HTTP {status}: {}", body.trim());
            1
        }
        Ok(Err(e)) => {
            eprintln!("probe: {url}: {e}");
            2
        }
        Err(_) => {
            eprintln!("probe: {url}: no answer within {timeout:?}");
            2
        }
    }
}

async fn get(url: &str) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs are supported")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let mut stream = tokio::net::TcpStream::connect(authority).await.map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut response).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed HTTP response: {:?}", text.lines().next().unwrap_or("")))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((status, body))
}
