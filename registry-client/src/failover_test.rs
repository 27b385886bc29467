//! Tests of which failures make a call move on to the next endpoint, against tiny
//! canned-answer HTTP servers on loopback (which [`crate::auth_test`] uses too).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// One request a [`Canned`] server received.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// `METHOD /path?query`.
    pub(crate) line: String,
    /// Header names lowercased, values as sent, in order.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Seen {
    /// The value of header `name` (lowercase), if the request had it.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A server that answers every request with the same status and body (or as a script
/// says), and records the requests.
pub(crate) struct Canned {
    pub(crate) addr: String,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Canned {
    pub(crate) async fn start(status: u16, body: &'static str) -> Canned {
        Canned::scripted(move |_| (status, body)).await
    }

    /// A server that answers each request as `answer(request line)` says.
    pub(crate) async fn scripted(
        answer: impl Fn(&str) -> (u16, &'static str) + Send + Sync + 'static,
    ) -> Canned {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let (counter, record) = (hits.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (counter, record, answer) = (counter.clone(), record.clone(), answer.clone());
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut socket).await else {
                        return;
                    };
                    let (status, body) = answer(&request.line);
                    record.lock().unwrap().push(request);
                    counter.fetch_add(1, Ordering::SeqCst);
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         x-registry-index: 17\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Canned { addr, hits, seen }
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The requests received so far, in order.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Reads the request head and as many body bytes as `content-length` says; `None` if
/// the connection closed first.
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let line = lines.next().unwrap_or_default();
            let line = line.trim_end_matches(" HTTP/1.1").to_owned();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let length: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = socket.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
            return Some(Seen {
                line,
                headers,
                body,
            });
        }
    }
}

/// An address nobody listens on: bound, then released.
async fn dead_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

const LEASE: &str = r#"{"lease":"67e55044-10b1-426f-9247-bb680e5fe0c8","ttl":"5s","ttl_ms":5000,"granted_index":3,"granted_at_ms":1}"#;
const NO_LEADER: &str = r#"{"error":{"code":"no_leader","message":"election"}}"#;
const NOT_FOUND: &str = r#"{"error":{"code":"lease_not_found","message":"gone"}}"#;

fn client(addrs: &[&str]) -> Client {
    Client::builder(addrs.iter().copied())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn read_fails_over_on_503_and_then_sticks_to_the_endpoint_that_answered() {
    let down = Canned::start(503, NO_LEADER).await;
    let up = Canned::start(200, LEASE).await;
    let client = client(&[&down.addr, &up.addr]);
    let lease = Uuid::new_v4();

    let answer = client
        .get_lease(lease, Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(answer.value.ttl_ms, 5000);
    assert_eq!(answer.index, Some(17));
    assert_eq!((down.hits(), up.hits()), (1, 1));

    client.get_lease(lease, Consistency::Stale).await.unwrap();
    assert_eq!(
        (down.hits(), up.hits()),
        (1, 2),
        "second call should start at `up`"
    );
}

#[tokio::test]
async fn keepalive_fails_over_when_an_endpoint_is_down() {
    let up = Canned::start(200, LEASE).await;
    let client = client(&[&dead_addr().await, &up.addr]);
    client.keepalive(Uuid::new_v4()).await.unwrap();
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn create_is_not_repeated_after_a_503() {
    let down = Canned::start(503, NO_LEADER).await;
    let up = Canned::start(200, LEASE).await;
    let client = client(&[&down.addr, &up.addr]);

    let err = client
        .create_lease(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.code(), Some("no_leader"));
    assert_eq!((down.hits(), up.hits()), (1, 0));
}

#[tokio::test]
async fn create_moves_on_when_the_connection_is_refused() {
    let up = Canned::start(200, LEASE).await;
    let client = client(&[&dead_addr().await, &up.addr]);
    let answer = client.create_lease(Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer.value.ttl, "5s");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn a_404_is_final() {
    let first = Canned::start(404, NOT_FOUND).await;
    let second = Canned::start(200, LEASE).await;
    let client = client(&[&first.addr, &second.addr]);
    let err = client
        .get_lease(Uuid::new_v4(), Consistency::Linearizable)
        .await
        .unwrap_err();
    assert!(err.is_lease_not_found(), "{err}");
    assert_eq!(second.hits(), 0);
}

#[tokio::test]
async fn all_endpoints_down_reports_the_last_transport_error() {
    let client = client(&[&dead_addr().await, &dead_addr().await]);
    let err = client.cluster_status().await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_success_with_a_bad_body_is_a_decode_error() {
    let bad = Canned::start(200, r#"{"lease":"not a uuid"}"#).await;
    let client = client(&[&bad.addr]);
    let err = client
        .get_lease(Uuid::new_v4(), Consistency::Linearizable)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
}

#[test]
fn endpoints_are_checked_when_the_client_is_built() {
    assert!(matches!(
        Client::new(Vec::<String>::new()),
        Err(Error::NoEndpoints)
    ));
    for bad in [
        "ftp://127.0.0.1:1",
        "127.0.0.1",
        "127.0.0.1:port",
        ":80",
        "h:1/v1",
        "",
    ] {
        assert!(
            matches!(Client::new([bad]), Err(Error::InvalidEndpoint { .. })),
            "{bad:?} should be rejected"
        );
    }
    let client = Client::new(["http://127.0.0.1:7000/", "localhost:7001"]).unwrap();
    assert_eq!(client.servers(), ["127.0.0.1:7000", "localhost:7001"]);
}
