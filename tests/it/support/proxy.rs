//! An in-process TCP proxy for network fault injection between the service
//! and upstream (the upstream PostgreSQL port in postgres mode, the PostgREST
//! stand-in in REST mode).
//!
//! It listens on `127.0.0.1:<random port>` and forwards every accepted
//! connection to a fixed target; the test points the service's config at
//! [`Proxy::addr`] instead of the real upstream. [`Proxy::set`] switches the
//! network's behaviour at any time, for new *and* existing connections:
//!
//! - [`NetFault::Pass`]: forward both ways. Switching back to `Pass` heals
//!   the network: every connection that lost bytes while a blackhole or a
//!   half-open fault was active is reset (RST), as TCP eventually does with a
//!   connection whose peer vanished; untouched connections carry on.
//! - [`NetFault::Delay`]: forward, but hold every chunk for the given time
//!   first (per direction, so a request/response round trip pays it twice).
//! - [`NetFault::Blackhole`]: a partition. New connections are accepted and
//!   read from but never answered and never reach the target; existing ones
//!   have their bytes discarded in both directions. Nothing is closed until
//!   the network heals.
//! - [`NetFault::Reset`]: every existing connection is closed with a TCP RST
//!   (on both sides), and new connections are reset right after accept.
//! - [`NetFault::HalfOpen`]: bytes in one direction are discarded (existing
//!   and new connections), the other direction still flows: the client's
//!   requests reach the server but no answer comes back, or the reverse.
//!
//! Connections are never silently repaired: a connection that lost bytes is
//! corrupt (a protocol stream with a hole in it), so it stays "poisoned" until
//! [`Proxy::set`]`(Pass)` resets it. A client that wants to survive a long
//! partition on its own needs its own timeouts; see `chaos.rs`.
//!
//! Closing with RST: `SO_LINGER` 0 set just before the socket is dropped (and
//! the write half forgotten, so no FIN goes out first).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which way bytes travel through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Direction {
    /// From the client (the service) to the target (upstream).
    ToServer,
    /// From the target back to the client.
    ToClient,
}

/// The network's current behaviour; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum NetFault {
    Pass,
    Delay(Duration),
    Blackhole,
    Reset,
    HalfOpen(Direction),
}

/// Counters, for test output.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ProxyStats {
    pub accepted: u64,
    pub resets: u64,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
    pub bytes_dropped: u64,
}

/// A running proxy; stops accepting and resets its connections on drop.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    target: SocketAddr,
    mode: Mutex<NetFault>,
    conns: Mutex<Vec<Arc<Conn>>>,
    accepted: AtomicU64,
    resets: AtomicU64,
    to_server: AtomicU64,
    to_client: AtomicU64,
    dropped: AtomicU64,
}

struct Conn {
    drop_to_server: AtomicBool,
    drop_to_client: AtomicBool,
    /// Turned true to reset the connection.
    kill: watch::Sender<bool>,
}

impl Conn {
    fn new() -> Arc<Conn> {
        Arc::new(Conn { drop_to_server: AtomicBool::new(false), drop_to_client: AtomicBool::new(false), kill: watch::channel(false).0 })
    }
    fn poisoned(&self) -> bool {
        self.drop_to_server.load(Ordering::SeqCst) || self.drop_to_client.load(Ordering::SeqCst)
    }
    fn drops(&self, dir: Direction) -> bool {
        match dir {
            Direction::ToServer => self.drop_to_server.load(Ordering::SeqCst),
            Direction::ToClient => self.drop_to_client.load(Ordering::SeqCst),
        }
    }
    fn poison(&self, dir: Direction) {
        match dir {
            Direction::ToServer => self.drop_to_server.store(true, Ordering::SeqCst),
            Direction::ToClient => self.drop_to_client.store(true, Ordering::SeqCst),
        }
    }
    fn killed(&self) -> bool {
        *self.kill.borrow()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proxy {
    /// Starts forwarding `127.0.0.1:<random>` to `target`, in `Pass` mode.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy: local_addr");
        let shared = Arc::new(Shared {
            target,
            mode: Mutex::new(NetFault::Pass),
            conns: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            to_server: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                s.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move { handle(s, client).await });
            }
        });
        Proxy { addr, shared, accept }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Switches the network's behaviour (see the module docs).
    pub fn set(&self, fault: NetFault) {
        *lock(&self.shared.mode) = fault;
        let mut conns = lock(&self.shared.conns);
        conns.retain(|c| !c.killed() && Arc::strong_count(c) > 1);
        match fault {
            NetFault::Pass => {
                for c in conns.iter().filter(|c| c.poisoned()) {
                    c.kill.send_replace(true);
                }
            }
            NetFault::Delay(_) => {}
            NetFault::Blackhole => {
                for c in conns.iter() {
                    c.poison(Direction::ToServer);
                    c.poison(Direction::ToClient);
                }
            }
            NetFault::Reset => {
                for c in conns.iter() {
                    c.kill.send_replace(true);
                }
            }
            NetFault::HalfOpen(dir) => {
                for c in conns.iter() {
                    c.poison(dir);
                }
            }
        }
        conns.retain(|c| !c.killed());
    }

    /// Lets new connections through again but leaves the connections that
    /// lost bytes as they are (still discarding): a network that came back
    /// while the client still holds a connection whose peer is gone, which
    /// TCP alone only notices after many minutes.
    pub fn heal_new_connections_only(&self) {
        *lock(&self.shared.mode) = NetFault::Pass;
    }

    /// Resets every open connection now, whatever the mode.
    pub fn reset_all(&self) {
        let mut conns = lock(&self.shared.conns);
        for c in conns.iter() {
            c.kill.send_replace(true);
        }
        conns.clear();
    }

    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            resets: s.resets.load(Ordering::Relaxed),
            bytes_to_server: s.to_server.load(Ordering::Relaxed),
            bytes_to_client: s.to_client.load(Ordering::Relaxed),
            bytes_dropped: s.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset_all();
    }
}

/// Closes a socket with RST instead of FIN.
fn rst(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn handle(s: Arc<Shared>, client: TcpStream) {
    let mode = *lock(&s.mode);
    let conn = Conn::new();
    match mode {
        NetFault::Reset => {
            s.resets.fetch_add(1, Ordering::Relaxed);
            rst(client);
            return;
        }
        NetFault::Blackhole => {
            conn.poison(Direction::ToServer);
            conn.poison(Direction::ToClient);
            lock(&s.conns).push(conn.clone());
            blackhole(&s, client, &conn).await;
            return;
        }
        NetFault::HalfOpen(dir) => conn.poison(dir),
        NetFault::Pass | NetFault::Delay(_) => {}
    }
    let server = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(s.target)).await {
        Ok(Ok(server)) => server,
        // Target down (e.g. upstream restarting): refuse the client the way
        // the real server's closed port would, with a reset.
        _ => {
            s.resets.fetch_add(1, Ordering::Relaxed);
            rst(client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    lock(&s.conns).push(conn.clone());
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pump(s.clone(), conn.clone(), cr, sw, Direction::ToServer));
    let down = tokio::spawn(pump(s.clone(), conn.clone(), sr, cw, Direction::ToClient));
    let _ = tokio::join!(up, down);
}

/// Accept, read, never answer: until the connection is reset or the client
/// goes away.
async fn blackhole(s: &Shared, mut client: TcpStream, conn: &Conn) {
    let mut kill = conn.kill.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            r = client.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => { s.dropped.fetch_add(n as u64, Ordering::Relaxed); }
            },
            _ = kill.wait_for(|k| *k) => {
                s.resets.fetch_add(1, Ordering::Relaxed);
                rst(client);
                return;
            }
        }
    }
}

/// Copies one direction until EOF, an error, or a reset of the connection.
async fn pump(s: Arc<Shared>, conn: Arc<Conn>, mut src: OwnedReadHalf, mut dst: OwnedWriteHalf, dir: Direction) {
    let mut kill = conn.kill.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    let counter = match dir {
        Direction::ToServer => &s.to_server,
        Direction::ToClient => &s.to_client,
    };
    let killed = loop {
        let n = tokio::select! {
            r = src.read(&mut buf) => r,
            _ = kill.wait_for(|k| *k) => break true,
        };
        let n = match n {
            Ok(0) => {
                // Orderly close: pass the FIN on (unless bytes this way are
                // being discarded: then the peer never learns).
                if !conn.drops(dir) {
                    let _ = dst.shutdown().await;
                }
                break false;
            }
            Ok(n) => n,
            // The source reset or failed: reset the other side too.
            Err(_) => {
                conn.kill.send_replace(true);
                break true;
            }
        };
        let mode = *lock(&s.mode);
        if let NetFault::Delay(d) = mode {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = kill.wait_for(|k| *k) => break true,
            }
        }
        if conn.drops(dir) {
            s.dropped.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        tokio::select! {
            r = dst.write_all(&buf[..n]) => if r.is_err() {
                conn.kill.send_replace(true);
                break true;
            },
            _ = kill.wait_for(|k| *k) => break true,
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    };
    if killed {
        // RST on the socket this pump writes to; the other pump does the same
        // for the other socket. The read half is dropped here, and once both
        // halves of a socket are gone it closes with the zero linger set.
        if dir == Direction::ToServer {
            s.resets.fetch_add(1, Ordering::Relaxed);
        }
        let _ = AsRef::<TcpStream>::as_ref(&dst).set_zero_linger();
        let _ = AsRef::<TcpStream>::as_ref(&src).set_zero_linger();
        dst.forget();
    }
    // Orderly: the FIN went on above; the halves drop here, and each socket
    // closes normally once the other direction's pump is done with it too.
}
