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

/// Pins the calling thread to one CPU (best effort).
fn pin(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// Where the receiving ends are read.
#[derive(Debug, Clone, Copy)]
pub struct Readers {
    /// Read by a thread blocked in epoll (as a real client is), so every
    /// write also pays the receiver's wake-up, as a server's writes do.
    pub live: bool,
    pub writer_cpu: Option<usize>,
    pub reader_cpu: Option<usize>,
    /// Write each round in this many consecutive groups of sockets, with
    /// `group_gap` between them (not timed): the pattern of broadcasts to
    /// many smaller channels, where the readers catch up and fall asleep
    /// between groups, so more writes pay for waking them.
    pub groups: usize,
    pub group_gap: std::time::Duration,
    /// Reading processes, each with its share of the sockets (as the load
    /// generator's `--workers`): more processes on the reader's core mean
    /// more of them asleep, so more writes pay a wake-up.
    pub procs: usize,
    /// Write the sockets in a fixed random order instead of the order they
    /// were accepted (and their kernel state allocated) in: a server's
    /// subscriber lists are in no such order.
    pub shuffle: bool,
    /// The pause between rounds (not counted). Match the benchmark's
    /// `--interval-ms`: a receiver idle for longer than TCP's
    /// retransmission timeout (200 ms or more) acknowledges the next
    /// segment at once ("quick ack"), and on loopback that acknowledgement
    /// is processed inside the writer's `send`.
    pub round_gap: std::time::Duration,
}

/// A fixed pseudo-random permutation (Fisher–Yates over a 64-bit LCG).
fn shuffle<T>(items: &mut [T]) {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..items.len()).rev() {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        items.swap(i, ((state >> 33) % (i as u64 + 1)) as usize);
    }
}

pub fn run(sockets: usize, payload: usize, rounds: usize, readers_mode: Readers) -> std::io::Result<FloorReport> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let frame = ws_frame(payload);
    let mut per_round = Vec::with_capacity(rounds);
    if readers_mode.live {
        // The receiving ends live in a child process, so this process holds
        // one descriptor per socket, as a server does, and the floor can be
        // measured at the server's socket count (19,000 here; the hard
        // descriptor limit is 20,000 per process).
        let procs = readers_mode.procs.clamp(1, sockets.max(1));
        let mut children = Vec::with_capacity(procs);
        for p in 0..procs {
            // Socket counts as even as they go: the first ones take the remainder.
            let share = sockets / procs + usize::from(p < sockets % procs);
            let expected = share * rounds * frame.len();
            children.push(
                std::process::Command::new(std::env::current_exe()?)
                    .args(["floor-reader", "--addr", &addr.to_string(), "--sockets", &share.to_string()])
                    .args(["--expected", &expected.to_string()])
                    .args(readers_mode.reader_cpu.map(|c| format!("--cpu={c}")))
                    .stdout(std::process::Stdio::piped())
                    .spawn()?,
            );
        }
        let mut writers = Vec::with_capacity(sockets);
        listener.set_nonblocking(true)?;
        while writers.len() < sockets {
            match listener.accept() {
                Ok((server, _)) => {
                    server.set_nonblocking(false)?;
                    server.set_nodelay(true)?;
                    writers.push(server);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    for child in &mut children {
                        if let Some(status) = child.try_wait()? {
                            return Err(std::io::Error::other(format!("floor reader ended early: {status}")));
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        }
        for child in &mut children {
            let mut ready = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.as_mut().expect("piped stdout")),
                &mut ready,
            )?;
            if ready.trim() != "ready" {
                return Err(std::io::Error::other(format!("floor reader did not start: {ready:?}")));
            }
        }
        if readers_mode.shuffle {
            shuffle(&mut writers);
        }
        pin(readers_mode.writer_cpu);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let group_len = sockets.div_ceil(readers_mode.groups.max(1));
        for _ in 0..rounds {
            let mut cpu = 0.0;
            for group in writers.chunks_mut(group_len) {
                let started = thread_cpu_secs();
                for w in group {
                    w.write_all(&frame)?;
                }
                cpu += thread_cpu_secs() - started;
                if !readers_mode.group_gap.is_zero() {
                    std::thread::sleep(readers_mode.group_gap);
                }
            }
            per_round.push(cpu * 1e6 / sockets as f64);
            std::thread::sleep(readers_mode.round_gap);
        }
        for mut child in children {
            let status = child.wait()?;
            if !status.success() {
                return Err(std::io::Error::other(format!("floor reader failed: {status}")));
            }
        }
    } else {
        let mut writers = Vec::with_capacity(sockets);
        let mut readers = Vec::with_capacity(sockets);
        for _ in 0..sockets {
            let client = TcpStream::connect(addr)?;
            let (server, _) = listener.accept()?;
            server.set_nodelay(true)?;
            writers.push(server);
            readers.push(client);
        }
        pin(readers_mode.writer_cpu);
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

/// The floor's reading process: connects `sockets` clients to `addr`,
/// says "ready" on stdout, then reads them from epoll until `expected`
/// bytes have arrived (or 5 s pass with nothing).
pub fn reader(addr: std::net::SocketAddr, sockets: usize, expected: usize, cpu: Option<usize>) -> std::io::Result<()> {
    pin(cpu);
    let mut readers = Vec::with_capacity(sockets);
    for i in 0..sockets {
        // From 16 source addresses, as `run`'s clients: one address's
        // ephemeral ports may still be held by an earlier run's sockets.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        let source = std::net::Ipv4Addr::new(127, 0, 1, 1 + (i % 16) as u8);
        socket.bind(&std::net::SocketAddr::new(source.into(), 0).into())?;
        socket.connect(&addr.into())?;
        readers.push(TcpStream::from(socket));
    }
    println!("ready");
    let left = epoll_drain(&readers, expected)?;
    if left > 0 {
        return Err(std::io::Error::other(format!("{left} bytes never arrived")));
    }
    Ok(())
}

/// Reads every receiver from one thread blocked in epoll until `expected`
/// bytes have arrived; returns how many did not (after 5 s of silence).
fn epoll_drain(readers: &[TcpStream], mut expected: usize) -> std::io::Result<usize> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    // SAFETY: plain epoll calls on descriptors this function's caller owns.
    let epoll = unsafe { libc::epoll_create1(0) };
    if epoll < 0 {
        return Err(std::io::Error::last_os_error());
    }
    for (i, r) in readers.iter().enumerate() {
        r.set_nonblocking(true)?;
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, r.as_raw_fd(), &mut event) };
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = [0u8; 65536];
    let mut open = readers.len();
    // Ends when everything arrived, after 5 s of silence, or when every
    // writer has gone (a writer that died must not leave this spinning on
    // end-of-stream events).
    while expected > 0 && open > 0 {
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 5000) };
        if n <= 0 {
            break;
        }
        for e in &events[..n as usize] {
            let mut stream = &readers[e.u64 as usize];
            loop {
                match stream.read(&mut buf) {
                    Ok(got) if got > 0 => expected = expected.saturating_sub(got),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // End of stream or a failed socket: stop watching it.
                    _ => {
                        let no_event = std::ptr::null_mut();
                        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_DEL, stream.as_raw_fd(), no_event) };
                        open -= 1;
                        break;
                    }
                }
            }
        }
    }
    unsafe { libc::close(epoll) };
    Ok(expected)
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
        // With live readers the receiving ends are a child process of the
        // binary itself: tests/floor.rs runs that one.
        let readers = super::Readers {
            live: false,
            writer_cpu: None,
            reader_cpu: None,
            groups: 1,
            group_gap: std::time::Duration::ZERO,
            procs: 1,
            shuffle: false,
            round_gap: std::time::Duration::from_millis(50),
        };
        let r = super::run(4, 100, 2, readers).unwrap();
        assert_eq!(r.frame_bytes, 102);
        assert!(r.cpu_us_per_write >= 0.0);
    }
}
