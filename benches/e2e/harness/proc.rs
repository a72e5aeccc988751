//! A child process watched from outside: peak RSS (`VmHWM` from
//! /proc/<pid>/status) and CPU time (utime + stime from /proc/<pid>/stat),
//! sampled every 20 ms until it exits, and its stderr lines with the time
//! they arrived (the service logs to stderr).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SAMPLE_EVERY: Duration = Duration::from_millis(20);
const MAX_LINES: usize = 200_000;

/// What a watched process used.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub wall: Duration,
    /// Peak resident set size, bytes (`VmHWM`).
    pub peak_rss: u64,
    /// User + system CPU time at the last sample before exit.
    pub cpu: Duration,
    pub status: Option<ExitStatus>,
}

impl Usage {
    pub fn peak_rss_mb(&self) -> f64 {
        self.peak_rss as f64 / (1024.0 * 1024.0)
    }
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

type Lines = Arc<Mutex<Vec<(Duration, String)>>>;

/// A running, watched child. Killed (SIGKILL) if dropped while running.
pub struct Watched {
    pub pid: u32,
    pub started: Instant,
    lines: Lines,
    done: Option<tokio::sync::oneshot::Receiver<Usage>>,
    finished: bool,
    exited: Arc<AtomicBool>,
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// (VmHWM bytes, utime+stime) of a live process.
pub fn sample(pid: u32) -> Option<(u64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some((hwm_kb * 1024, cpu_time(pid)?))
}

/// utime + stime of a process (all threads).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": fields after the comm; utime/stime are fields 14/15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) as f64 / clock_ticks() as f64))
}

impl Watched {
    /// Spawns `cmd` with stderr captured (stdout discarded).
    pub fn spawn(mut cmd: Command) -> std::io::Result<Watched> {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped()).stdin(Stdio::null());
        let started = Instant::now();
        let mut child: Child = cmd.spawn()?;
        let pid = child.id();
        let lines: Lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut v = l.lock().unwrap();
                if v.len() < MAX_LINES {
                    v.push((started.elapsed(), line));
                }
            }
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let exited = Arc::new(AtomicBool::new(false));
        let ex = exited.clone();
        std::thread::spawn(move || {
            let mut usage = Usage::default();
            loop {
                if let Some((rss, cpu)) = sample(pid) {
                    usage.peak_rss = usage.peak_rss.max(rss);
                    usage.cpu = usage.cpu.max(cpu);
                }
                match child.try_wait() {
                    Ok(Some(st)) => {
                        usage.status = Some(st);
                        break;
                    }
                    Ok(None) => std::thread::sleep(SAMPLE_EVERY),
                    Err(_) => {
                        let _ = child.wait();
                        break;
                    }
                }
            }
            usage.wall = started.elapsed();
            ex.store(true, Ordering::SeqCst);
            let _ = tx.send(usage);
        });
        Ok(Watched { pid, started, lines, done: Some(rx), finished: false, exited })
    }

    /// When a stderr line containing `needle` first arrived, after spawn.
    pub fn line_at(&self, needle: &str) -> Option<Duration> {
        self.lines.lock().unwrap().iter().find(|(_, l)| l.contains(needle)).map(|(t, _)| *t)
    }

    /// Every stderr line containing `needle`, with when it arrived.
    pub fn lines_containing(&self, needle: &str) -> Vec<(Duration, String)> {
        self.lines.lock().unwrap().iter().filter(|(_, l)| l.contains(needle)).cloned().collect()
    }

    /// The last `n` stderr lines (for error messages).
    pub fn tail(&self, n: usize) -> String {
        let v = self.lines.lock().unwrap();
        v[v.len().saturating_sub(n)..].iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// Current CPU time of the (live) process.
    pub fn cpu_now(&self) -> Option<Duration> {
        cpu_time(self.pid)
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> Usage {
        let rx = self.done.take().expect("waited once");
        let u = rx.await.unwrap_or_default();
        self.finished = true;
        // Let the stderr reader drain the last lines.
        tokio::time::sleep(Duration::from_millis(20)).await;
        u
    }

    /// Waits at most `limit`; None if still running.
    pub async fn wait_timeout(&mut self, limit: Duration) -> Option<Usage> {
        let rx = self.done.as_mut().expect("waited once");
        match tokio::time::timeout(limit, rx).await {
            Ok(r) => {
                self.done = None;
                self.finished = true;
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some(r.unwrap_or_default())
            }
            Err(_) => None,
        }
    }

    /// SIGTERM, then waits (SIGKILL after 30 s).
    pub async fn terminate(&mut self) -> Usage {
        signal(self.pid, "TERM");
        if let Some(u) = self.wait_timeout(Duration::from_secs(30)).await {
            return u;
        }
        signal(self.pid, "KILL");
        self.wait().await
    }

    /// The process has exited (whether or not it was waited for).
    pub fn is_finished(&self) -> bool {
        self.finished || self.exited.load(Ordering::SeqCst)
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(rx) = self.done.as_mut() {
            // Still running (a failed section): don't leave it behind. The
            // monitor thread reaps it. (Once it has exited, its pid may be
            // reused: signal only while the monitor has not reported.)
            if matches!(rx.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Empty)) {
                signal(self.pid, "KILL");
            }
        }
    }
}
