//! A throwaway `redis-server` for tests: on a free 127.0.0.1 port, in a temporary directory,
//! with persistence off, stopped on drop (also when the test panics).
//!
//! `redis-server --port 0` disables TCP instead of picking a port, so the harness binds
//! 127.0.0.1:0, reads the port the OS chose, releases it and starts the server there. Start-up
//! is awaited by polling `PING` a bounded number of times (I/O readiness, not a timing
//! assertion).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How many times start-up polls `PING`, 10 ms apart (5 s in all).
const PING_TRIES: u32 = 500;

/// A running `redis-server` that this test started; killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    Ok(l.local_addr()
        .map_err(|e| format!("local addr: {e}"))?
        .port())
}

fn temp_dir(port: u16) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "oai-resilience-redis-{}-{port}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

impl RedisServer {
    /// Starts a server on a free port; panics (failing the test) if `redis-server` is missing
    /// or does not answer `PING` in time. Run `scripts/ensure-redis.sh` to install it.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("could not start redis-server: {e}"))
    }

    /// Starts a server on a free port, or says why it could not (for a tool, not a test).
    pub fn try_start() -> Result<Self, String> {
        // A port freed by the OS can be taken again before the server binds it: a few tries.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let mut server = RedisServer {
                child: None,
                port,
                dir: temp_dir(port)?,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("spawn redis-server (is it installed? scripts/ensure-redis.sh): {e}")
            })?;
        self.child = Some(child);
        for _ in 0..PING_TRIES {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("redis-server exited at start-up: {status}"));
                }
            }
            if ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        Err("redis-server did not answer PING in time".into())
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's URL, `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server (idempotent); clients see the connection drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("could not restart redis-server: {e}");
        }
    }

    /// Whether the server answers `PING` now.
    pub fn is_up(&self) -> bool {
        ping(self.port)
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A reply to [`RedisServer::command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`, or a bulk string.
    Str(String),
    /// `:n`.
    Int(i64),
    /// A nil bulk string or array.
    Nil,
    /// `*n ...`.
    Array(Vec<Reply>),
    /// `-ERR ...`.
    Error(String),
}

impl Reply {
    /// The integer, or panics.
    pub fn int(&self) -> i64 {
        match self {
            Reply::Int(n) => *n,
            other => panic!("not an integer: {other:?}"),
        }
    }

    /// The strings of an array reply, or panics.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Reply::Array(items) => items
                .iter()
                .map(|i| match i {
                    Reply::Str(s) => s.clone(),
                    other => panic!("not a string: {other:?}"),
                })
                .collect(),
            other => panic!("not an array: {other:?}"),
        }
    }
}

impl RedisServer {
    /// Runs one command on a fresh connection (plain RESP, to inspect what the store wrote).
    pub fn command(&self, args: &[&str]) -> Reply {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        s.write_all(&out).expect("write command");
        let mut r = std::io::BufReader::new(s);
        read_reply(&mut r)
    }
}

fn read_line(r: &mut impl std::io::BufRead) -> String {
    let mut line = String::new();
    r.read_line(&mut line).expect("read reply");
    line.trim_end_matches("\r\n").to_owned()
}

fn read_reply(r: &mut impl std::io::BufRead) -> Reply {
    let line = read_line(r);
    let (tag, rest) = line.split_at(1);
    match tag {
        "+" => Reply::Str(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(rest.parse().expect("integer reply")),
        "$" => {
            let n: i64 = rest.parse().expect("bulk length");
            if n < 0 {
                return Reply::Nil;
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf).expect("bulk body");
            buf.truncate(n as usize);
            Reply::Str(String::from_utf8(buf).expect("utf-8 bulk"))
        }
        "*" => {
            let n: i64 = rest.parse().expect("array length");
            if n < 0 {
                return Reply::Nil;
            }
            Reply::Array((0..n).map(|_| read_reply(r)).collect())
        }
        other => panic!("unknown reply type {other:?}"),
    }
}
