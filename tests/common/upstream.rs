//! An SMTP upstream under the test's control: scripted replies per recipient and per
//! attempt, a silent mode (accepts connections, never answers), and a record of what it
//! accepted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Where in the transaction a scripted reply applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The greeting (see [`TestUpstream::refuse`]).
    Greeting,
    /// The reply to `EHLO`.
    Ehlo,
    /// The reply to `AUTH` (advertised when a refusal or acceptance is set for it).
    Auth,
    /// The reply to `MAIL FROM`.
    Mail,
    /// The reply to `RCPT TO`.
    Rcpt,
    /// The reply after the data.
    Data,
}

/// A script: `(stage, recipient, attempt number for that recipient, from 1)` to a reply
/// line such as `"451 4.3.0 later"`, or `None` for the normal `250`.
pub type Script = Box<dyn Fn(Stage, &str, u32) -> Option<String> + Send + Sync>;

/// One accepted message.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
}

#[derive(Default)]
struct State {
    deliveries: Vec<Delivery>,
    attempts: HashMap<String, u32>,
    silent: bool,
    connections: usize,
    delay: std::time::Duration,
    refusals: HashMap<Stage, String>,
    ehlos: u32,
    auths: u32,
    mails: u32,
    endless: bool,
    endless_sent: u64,
    endless_done: bool,
    /// PIPELINING is not advertised.
    no_pipelining: bool,
}

/// The upstream; stops when dropped.
pub struct TestUpstream {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestUpstream {
    /// Accept everything.
    pub async fn start() -> TestUpstream {
        Self::scripted(Box::new(|_, _, _| None)).await
    }

    /// Reply as `script` says.
    pub async fn scripted(script: Script) -> TestUpstream {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), script)
    }

    /// Serve on a listener already bound (to come up on a port the relay already uses).
    pub fn on(listener: TcpListener, script: Script) -> TestUpstream {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let script = Arc::new(script);
        let (s, sc) = (state.clone(), script);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, sc) = (s.clone(), sc.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, s, sc).await;
                });
            }
        });
        TestUpstream { addr, state, task }
    }

    /// Stop answering new connections (they stay open, silent).
    pub fn set_silent(&self, silent: bool) {
        self.state.lock().unwrap().silent = silent;
    }

    /// Answer `stage` (greeting, EHLO, AUTH, MAIL) with `reply` on every connection from now
    /// on, or normally with `None`.
    pub fn refuse(&self, stage: Stage, reply: Option<&str>) {
        let mut s = self.state.lock().unwrap();
        match reply {
            Some(r) => s.refusals.insert(stage, r.to_string()),
            None => s.refusals.remove(&stage),
        };
    }

    /// Advertise PIPELINING (the default) or not, from the next EHLO on.
    #[allow(dead_code)]
    pub fn set_pipelining(&self, on: bool) {
        self.state.lock().unwrap().no_pipelining = !on;
    }

    /// Greet new connections with a line that never ends.
    pub fn set_endless_greeting(&self, endless: bool) {
        self.state.lock().unwrap().endless = endless;
    }

    /// Bytes of endless greeting sent, and whether the client closed the connection.
    pub fn endless_sent(&self) -> (u64, bool) {
        let s = self.state.lock().unwrap();
        (s.endless_sent, s.endless_done)
    }

    /// EHLO commands received.
    pub fn ehlos(&self) -> u32 {
        self.state.lock().unwrap().ehlos
    }

    /// AUTH commands received.
    pub fn auths(&self) -> u32 {
        self.state.lock().unwrap().auths
    }

    /// MAIL FROM commands received.
    pub fn mails(&self) -> u32 {
        self.state.lock().unwrap().mails
    }

    /// Take this long before answering the data (a slow relay).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Every accepted message so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().deliveries.clone()
    }

    /// Accepted messages for one recipient.
    pub fn delivered_to(&self, rcpt: &str) -> Vec<Delivery> {
        self.deliveries().into_iter().filter(|d| d.rcpts.iter().any(|r| r == rcpt)).collect()
    }

    /// RCPT attempts seen for a recipient.
    pub fn attempts(&self, rcpt: &str) -> u32 {
        self.state.lock().unwrap().attempts.get(rcpt).copied().unwrap_or(0)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// The `[upstream]` section pointing at this server.
    pub fn config(&self, extra: &str) -> String {
        format!("[upstream]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n{extra}\n", self.addr.port())
    }
}

async fn serve(stream: TcpStream, state: Arc<Mutex<State>>, script: Arc<Script>) -> std::io::Result<()> {
    let (silent, endless) = {
        let mut s = state.lock().unwrap();
        s.connections += 1;
        (s.silent, s.endless)
    };
    let refusal = |stage: Stage| state.lock().unwrap().refusals.get(&stage).map(|r| format!("{r}\r\n"));
    // Replies to pipelined commands go one write each: without this, Nagle's algorithm holds
    // each one back until the previous is acknowledged (a delayed ACK, up to 40 ms).
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    if silent {
        // Hold the connection open without a word until the client gives up.
        let mut sink = String::new();
        while read.read_line(&mut sink).await? > 0 {}
        return Ok(());
    }
    if endless {
        return endless_greeting(write, &state).await;
    }
    if let Some(r) = refusal(Stage::Greeting) {
        write.write_all(r.as_bytes()).await?;
        let mut sink = String::new();
        while read.read_line(&mut sink).await? > 0 {
            write.write_all(b"503 5.5.1 no\r\n").await?;
        }
        return Ok(());
    }
    write.write_all(b"220 upstream.test ESMTP test\r\n").await?;
    let (mut from, mut rcpts) = (String::new(), Vec::<String>::new());
    let mut in_mail = false;
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            let pipelining = {
                let mut s = state.lock().unwrap();
                s.ehlos += 1;
                if s.no_pipelining { "" } else { "250-PIPELINING\r\n" }
            };
            refusal(Stage::Ehlo).unwrap_or_else(|| {
                format!(
                    "250-upstream.test\r\n{pipelining}250-8BITMIME\r\n250-SMTPUTF8\r\n250-AUTH PLAIN LOGIN\r\n250 SIZE 100000000\r\n"
                )
            })
        } else if upper.starts_with("AUTH") {
            state.lock().unwrap().auths += 1;
            refusal(Stage::Auth).unwrap_or_else(|| "235 2.7.0 Authentication successful\r\n".into())
        } else if upper.starts_with("MAIL FROM:") {
            state.lock().unwrap().mails += 1;
            from = between_brackets(&line);
            rcpts.clear();
            let reply = refusal(Stage::Mail);
            in_mail = reply.is_none();
            reply.unwrap_or_else(|| "250 2.1.0 ok\r\n".into())
        } else if upper.starts_with("RCPT TO:") && !in_mail {
            "503 5.5.1 Error: need MAIL command\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = between_brackets(&line);
            let attempt = {
                let mut s = state.lock().unwrap();
                let n = s.attempts.entry(rcpt.clone()).or_insert(0);
                *n += 1;
                *n
            };
            match script(Stage::Rcpt, &rcpt, attempt) {
                Some(r) => format!("{r}\r\n"),
                None => {
                    rcpts.push(rcpt);
                    "250 2.1.5 ok\r\n".into()
                }
            }
        } else if upper.starts_with("DATA") && rcpts.is_empty() {
            // As Postfix does; a pipelining client sends DATA before it knows.
            "554 5.5.1 Error: no valid recipients\r\n".into()
        } else if upper.starts_with("DATA") {
            write.write_all(b"354 go ahead\r\n").await?;
            let data = read_data(&mut read).await?;
            let delay = state.lock().unwrap().delay;
            tokio::time::sleep(delay).await;
            let scripted = rcpts.iter().find_map(|r| {
                let attempt = state.lock().unwrap().attempts.get(r).copied().unwrap_or(1);
                script(Stage::Data, r, attempt)
            });
            match scripted {
                Some(r) => format!("{r}\r\n"),
                None => {
                    let delivery = Delivery { from: from.clone(), rcpts: rcpts.clone(), data };
                    state.lock().unwrap().deliveries.push(delivery);
                    "250 2.0.0 accepted\r\n".into()
                }
            }
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            "250 2.0.0 ok\r\n".into()
        };
        if upper.starts_with("DATA") || upper.starts_with("RSET") {
            in_mail = false;
            rcpts.clear();
        }
        write.write_all(reply.as_bytes()).await?;
    }
}

fn between_brackets(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line.rfind('>').unwrap_or(line.len());
    line[start..end].to_string()
}

async fn read_data(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let mut line = Vec::new();
        if read.read_until(b'\n', &mut line).await? == 0 {
            return Ok(data);
        }
        if line == b".\r\n" {
            return Ok(data);
        }
        let line = if line.starts_with(b"..") { &line[1..] } else { &line[..] };
        data.extend_from_slice(line);
    }
}

/// Send `220 ` and then never a line end, until the client goes away.
async fn endless_greeting(mut write: tokio::net::tcp::OwnedWriteHalf, state: &Mutex<State>) -> std::io::Result<()> {
    let chunk = vec![b'x'; 16 * 1024];
    write.write_all(b"220 ").await?;
    loop {
        if write.write_all(&chunk).await.is_err() {
            state.lock().unwrap().endless_done = true;
            return Ok(());
        }
        state.lock().unwrap().endless_sent += chunk.len() as u64;
    }
}
