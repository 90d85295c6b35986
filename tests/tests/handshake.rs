//! The WebSocket handshake on the wire, byte by byte, as a raw TCP client
//! sees it: the 101 and `connection_established` leave in one write, frames
//! sent along with the request are served, a request head that arrives in
//! pieces is still upgraded, and a refusal is a 101 followed by
//! `pusher:error` and a close frame.

use std::time::Duration;

use herald_e2e::{TestServer, WAIT};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// RFC 6455 §1.3's example key and the accept value the RFC gives for it.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn upgrade_request(app_key: &str) -> String {
    format!(
        "GET /app/{app_key}?protocol=7&client=js&version=8.4.0&flash=false HTTP/1.1\r\n\
         Host: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
    )
}

/// A masked client text frame (mask key 0: the payload is sent as is).
fn client_frame(text: &str) -> Vec<u8> {
    assert!(text.len() < 126);
    let mut frame = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// Splits `bytes` into the HTTP head and the server frames after it:
/// text payloads as JSON, a close frame as `{"close": code}`. Panics on a
/// partial frame.
fn split(bytes: &[u8]) -> (String, Vec<Value>) {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head") + 4;
    let head = String::from_utf8(bytes[..end].to_vec()).unwrap();
    let mut frames = Vec::new();
    let mut rest = &bytes[end..];
    while !rest.is_empty() {
        assert!(rest.len() >= 2, "partial frame header");
        let (len, start) = match rest[1] {
            126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 => panic!("no frame here is that long"),
            n => (n as usize, 2),
        };
        assert!(rest.len() >= start + len, "partial frame: {len} bytes announced");
        let payload = &rest[start..start + len];
        frames.push(match rest[0] {
            0x81 => serde_json::from_slice(payload).expect("JSON text frame"),
            0x88 => serde_json::json!({"close": u16::from_be_bytes([payload[0], payload[1]])}),
            other => panic!("unexpected frame opcode byte {other:#x}"),
        });
        rest = &rest[start + len..];
    }
    (head, frames)
}

/// Reads until `done` holds for everything read (or the server closes).
async fn read_until(stream: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&got) {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf)).await.expect("the server answers").unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

fn events(frames: &[Value]) -> Vec<String> {
    frames.iter().map(|f| f["event"].as_str().map_or_else(|| f.to_string(), str::to_owned)).collect()
}

#[tokio::test]
async fn the_101_and_connection_established_arrive_in_one_read() {
    let server = TestServer::start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(upgrade_request(&server.app.key).as_bytes()).await.unwrap();
    // One read: the server wrote both at once, so the client is woken once.
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf)).await.expect("the server answers").unwrap();
    let (head, frames) = split(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nSec-WebSocket-Accept: {ACCEPT}\r\n")), "{head}");
    assert_eq!(events(&frames), ["pusher:connection_established"]);
}

#[tokio::test]
async fn frames_sent_along_with_the_request_are_served() {
    let server = TestServer::start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut request = upgrade_request(&server.app.key).into_bytes();
    request.extend(client_frame(r#"{"event":"pusher:subscribe","data":{"channel":"early"}}"#));
    request.extend(client_frame(r#"{"event":"pusher:ping","data":{}}"#));
    stream.write_all(&request).await.unwrap();
    let got = read_until(&mut stream, |b| b.windows(11).any(|w| w == b"pusher:pong")).await;
    let (_, frames) = split(&got);
    assert_eq!(
        events(&frames),
        ["pusher:connection_established", "pusher_internal:subscription_succeeded", "pusher:pong"]
    );
    assert_eq!(frames[1]["channel"], "early");
}

#[tokio::test]
async fn a_request_head_that_arrives_in_pieces_is_still_upgraded() {
    let server = TestServer::start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = upgrade_request(&server.app.key);
    let (a, rest) = request.split_at(10);
    let (b, c) = rest.split_at(rest.len() / 2);
    for piece in [a, b, c] {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = read_until(&mut stream, |b| b.windows(29).any(|w| w == b"pusher:connection_established")).await;
    let (head, frames) = split(&got);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains(&format!("sec-websocket-accept: {}", ACCEPT.to_ascii_lowercase())));
    assert_eq!(events(&frames), ["pusher:connection_established"]);
    // And it is a working connection.
    stream.write_all(&client_frame(r#"{"event":"pusher:ping","data":{}}"#)).await.unwrap();
    let got = read_until(&mut stream, |b| b.windows(11).any(|w| w == b"pusher:pong")).await;
    assert!(String::from_utf8_lossy(&got).contains("pusher:pong"));
}

#[tokio::test]
async fn an_unknown_app_gets_the_101_then_4001_and_a_close_frame() {
    let server = TestServer::start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(upgrade_request("no-such-key").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut got)).await.expect("the server closes").unwrap();
    let (head, frames) = split(&got);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0]["event"], "pusher:error");
    assert_eq!(frames[0]["data"]["code"], 4001, "{:?}", frames[0]);
    assert_eq!(frames[1]["close"], 4001);
}

#[tokio::test]
async fn a_bad_upgrade_is_answered_by_http_as_before() {
    let server = TestServer::start().await;
    let request = upgrade_request(&server.app.key).replace("Version: 13", "Version: 8");
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let got = read_until(&mut stream, |b| b.windows(4).any(|w| w == b"\r\n\r\n")).await;
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 426"), "{head}");
    assert!(head.contains("sec-websocket-version: 13"), "{head}");
}
