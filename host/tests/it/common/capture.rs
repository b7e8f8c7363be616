//! A loopback HTTP server that records every request it gets and answers `200 OK` (or what
//! the test tells it to): the stand-in for the error webhook and for Sentry's envelope
//! endpoint.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// `POST`, `GET`, ...
    pub method: String,
    /// The path and query.
    pub path: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The server: listening on a port the OS picked, until the test ends.
pub struct Capture {
    /// Its port on 127.0.0.1.
    pub port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Capture {
    /// Start listening; every request is answered `200 OK`.
    pub fn start() -> Capture {
        Capture::start_answering(|_| OK.to_vec())
    }

    /// Start listening; the `n`th request (from 0) is answered with `answer(n)`, a whole raw
    /// HTTP/1.1 response.
    pub fn start_answering(answer: impl Fn(usize) -> Vec<u8> + Send + Sync + 'static) -> Capture {
        let answer: Answer = Arc::new(answer);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let store = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (store, answer) = (store.clone(), answer.clone());
                std::thread::spawn(move || serve(stream, &store, &answer));
            }
        });
        Capture { port, requests }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }

    /// The bodies of the POSTs so far that are JSON.
    pub fn json_bodies(&self) -> Vec<serde_json::Value> {
        self.requests()
            .iter()
            .filter(|r| r.method == "POST")
            .filter_map(|r| serde_json::from_slice(&r.body).ok())
            .collect()
    }
}

/// A plain `200 OK` with an empty JSON body.
pub const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";

type Answer = Arc<dyn Fn(usize) -> Vec<u8> + Send + Sync>;

fn serve(mut stream: TcpStream, store: &Mutex<Vec<Request>>, answer: &Answer) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    loop {
        // One request: headers, then Content-Length bytes of body.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let mut lines = head.lines();
        let mut request_line = lines.next().unwrap_or_default().split_whitespace();
        let method = request_line.next().unwrap_or_default().to_string();
        let path = request_line.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        let n = {
            let mut requests = store.lock().expect("lock");
            requests.push(Request {
                method,
                path,
                headers,
                body,
            });
            requests.len() - 1
        };
        if stream.write_all(&answer(n)).is_err() {
            return;
        }
    }
}
