#![allow(clippy::unwrap_used)]
//! Blobs served over plain HTTP/1.1 go out by `sendfile` when their pages
//! are cached, and by ordinary reads when not; either way every byte is
//! right, on keep-alive connections with several responses in a row.

use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::path::Path;

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

struct Server {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start() -> Server {
    // Always sendfile, not only when the CPUs are busy: that is the path under test.
    berth_registry::zero_copy::set_sendfile_after(0);
    let dir = tempfile::tempdir().unwrap();
    let app = berth_registry::router(berth_registry::filesystem_store(dir.path()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(berth_registry::server::serve(listener, app, None, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        dir,
        _stop: stop,
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 client connection, kept alive across requests.
struct Client(BufReader<TcpStream>);

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client(BufReader::new(TcpStream::connect(addr).await.unwrap()))
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let stream = self.0.get_mut();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut line = String::new();
        self.0.read_line(&mut line).await.unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.0.read_line(&mut line).await.unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.to_owned(), v.trim().to_owned()));
        }
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = if method == "HEAD" {
            0
        } else {
            resp.header("content-length").unwrap().parse().unwrap()
        };
        resp.body = vec![0; len];
        self.0.read_exact(&mut resp.body).await.unwrap();
        resp
    }
}

/// Bytes that are neither zeros nor periodic, so a misplaced region shows.
fn blob(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest(b"seed").to_vec();
    while out.len() < len {
        block = Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    out
}

async fn push(client: &mut Client, data: &[u8]) -> String {
    let digest = format!("sha256:{:x}", Sha256::digest(data));
    let r = client
        .send(
            "POST",
            &format!("/v2/zc/blobs/uploads/?digest={digest}"),
            &[],
            data,
        )
        .await;
    assert_eq!(r.status, 201);
    digest
}

/// Drops every file under `dir` from the page cache (clean pages need no privilege).
fn evict(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            evict(&p);
        } else {
            let f = std::fs::File::open(&p).unwrap();
            f.sync_all().unwrap();
            rustix::fs::fadvise(f.as_fd(), 0, None, rustix::fs::Advice::DontNeed).unwrap();
        }
    }
}

async fn sendfile_bytes(addr: SocketAddr) -> u64 {
    let mut c = Client::connect(addr).await;
    let text = String::from_utf8(c.send("GET", "/metrics", &[], b"").await.body).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("berth_registry_sendfile_bytes_total "))
        .unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn cached_blobs_go_out_by_sendfile_byte_identical_on_one_connection() {
    let server = start().await;
    let mut c = Client::connect(server.addr).await;
    let data = blob(9 * 1024 * 1024 + 12_345); // three sendfile chunks, the last one short
    let digest = push(&mut c, &data).await;
    let path = format!("/v2/zc/blobs/{digest}");
    let before = sendfile_bytes(server.addr).await;

    let whole = c.send("GET", &path, &[], b"").await;
    assert_eq!(whole.status, 200);
    assert!(whole.body == data, "whole blob differs");
    let head = c.send("HEAD", &path, &[], b"").await;
    assert_eq!(
        head.header("content-length"),
        Some(data.len().to_string().as_str())
    );
    let range = c
        .send("GET", &path, &[("Range", "bytes=1000-5243880")], b"")
        .await;
    assert_eq!(range.status, 206);
    assert!(range.body == data[1000..=5_243_880], "range differs");
    let tail = c.send("GET", &path, &[("Range", "bytes=-7")], b"").await;
    assert!(tail.body == data[data.len() - 7..], "suffix range differs");
    let again = c.send("GET", &path, &[], b"").await;
    assert!(
        again.body == data,
        "second whole blob on the same connection differs"
    );
    // The connection is still in step for ordinary responses.
    assert_eq!(c.send("GET", "/v2/", &[], b"").await.status, 200);

    let sent = sendfile_bytes(server.addr).await - before;
    assert!(
        sent >= 2 * data.len() as u64,
        "only {sent} bytes went by sendfile"
    );
}

#[tokio::test]
async fn blobs_not_in_the_page_cache_are_read_and_sent_correctly() {
    let server = start().await;
    let mut c = Client::connect(server.addr).await;
    let data = blob(3 * 1024 * 1024 + 77);
    let digest = push(&mut c, &data).await;
    evict(server.dir.path());
    let r = c
        .send("GET", &format!("/v2/zc/blobs/{digest}"), &[], b"")
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body == data, "blob read from disk differs");
    // Pipelined requests: the second response queues behind the first.
    let path = format!("/v2/zc/blobs/{digest}");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\n\r\nGET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=5-9\r\n\r\n"
    );
    c.0.get_mut().write_all(req.as_bytes()).await.unwrap();
    let mut expected = Vec::new();
    let mut got = Vec::new();
    for (want_status, want) in [(200u16, &data[..]), (206, &data[5..10])] {
        let mut line = String::new();
        c.0.read_line(&mut line).await.unwrap();
        assert!(line.contains(&want_status.to_string()), "{line}");
        let mut len = 0;
        loop {
            line.clear();
            c.0.read_line(&mut line).await.unwrap();
            if line.trim_end().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        c.0.read_exact(&mut body).await.unwrap();
        got.push(body);
        expected.push(want.to_vec());
    }
    assert!(got == expected, "pipelined responses differ");
}
