//! The kernel floor: what writing one WebSocket-sized frame to each of N
//! plain loopback TCP sockets costs, from one thread, with no server logic
//! at all. Server CPU per delivery is compared against this figure.

use std::io::Write;
use std::net::{TcpListener, TcpStream};

use serde::Serialize;

use crate::procstat::thread_cpu_secs;

#[derive(Debug, Serialize)]
pub struct FloorReport {
    pub sockets: usize,
    pub frame_bytes: usize,
    pub rounds: usize,
    pub cpu_us_per_write: f64,
    pub cpu_us_per_write_rounds: Vec<f64>,
}

/// An unmasked server-to-client text frame with a `payload`-byte body.
pub fn ws_frame(payload: usize) -> Vec<u8> {
    let mut frame = vec![0x81];
    match payload {
        0..=125 => frame.push(payload as u8),
        126..=65535 => {
            frame.push(126);
            frame.extend_from_slice(&(payload as u16).to_be_bytes());
        }
        _ => {
            frame.push(127);
            frame.extend_from_slice(&(payload as u64).to_be_bytes());
        }
    }
    frame.extend(std::iter::repeat_n(b'x', payload));
    frame
}

pub fn run(sockets: usize, payload: usize, rounds: usize) -> std::io::Result<FloorReport> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut writers = Vec::with_capacity(sockets);
    let mut readers = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        writers.push(server);
        readers.push(client);
    }
    let frame = ws_frame(payload);
    let mut per_round = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = thread_cpu_secs();
        for w in &mut writers {
            w.write_all(&frame)?;
        }
        per_round.push((thread_cpu_secs() - started) * 1e6 / sockets as f64);
        // Drain the receivers so socket buffers never fill between rounds.
        for r in &mut readers {
            drain(r, frame.len())?;
        }
    }
    let mut sorted = per_round.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(FloorReport {
        sockets,
        frame_bytes: frame.len(),
        rounds,
        cpu_us_per_write: sorted[sorted.len() / 2],
        cpu_us_per_write_rounds: per_round,
    })
}

fn drain(stream: &mut TcpStream, mut left: usize) -> std::io::Result<()> {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    while left > 0 {
        let n = stream.read(&mut buf[..left.min(4096)])?;
        if n == 0 {
            break;
        }
        left -= n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn frames_have_websocket_headers() {
        assert_eq!(super::ws_frame(5)[..2], [0x81, 5]);
        assert_eq!(super::ws_frame(300).len(), 304);
        let r = super::run(4, 100, 2).unwrap();
        assert_eq!(r.frame_bytes, 102);
        assert!(r.cpu_us_per_write >= 0.0);
    }
}
