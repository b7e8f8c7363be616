//! The example plugins in `examples/`, built from the workspace and bound as a user would:
//! `http-notify` (an async handler) against a real HTTP server in the test, `sqlite-batch` (a
//! batch handler) against a real SQLite file.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::inprocess::InProcess;

/// What the test's HTTP service received: the idempotency key and the JSON posted.
type Received = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// An HTTP service on a free port that answers each post by the posted event's body: `{"status":
/// N}` gets status N (503 with `Retry-After: 7`), anything else 200.
async fn service() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/hooks/orders",
        listener.local_addr().expect("addr")
    );
    let received: Received = Arc::default();
    let kept = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            use http_body_util::BodyExt as _;
                            let key = request
                                .headers()
                                .get("idempotency-key")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let posted: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            let status = posted["body"]["status"].as_u64().unwrap_or(200) as u16;
                            kept.lock().expect("received").push((key, posted));
                            let mut response = hyper::Response::new(http_body_util::Full::new(
                                hyper::body::Bytes::new(),
                            ));
                            *response.status_mut() =
                                hyper::StatusCode::from_u16(status).expect("a status");
                            if status == 503 {
                                response.headers_mut().insert(
                                    "retry-after",
                                    hyper::header::HeaderValue::from_static("7"),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, received)
}

/// Each answer of the service decides its message's fate: 200 deletes it, 503 retries it after
/// its Retry-After, 400 dead-letters it with the status; a body that is not JSON is
/// dead-lettered without a request. Every request carries its message id as the idempotency
/// key. (Real time: the requests' sockets are the plugin's.)
#[tokio::test]
async fn http_notify_posts_each_event_and_the_answer_decides_its_fate() {
    let (url, received) = service().await;
    let host = InProcess::start(
        "visibility_timeout = 30\nmax_receive_count = 10",
        &format!("[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"http-notify\"\nconfig = {{ url = \"{url}\", timeout_ms = 5000 }}\n"),
    )
    .await;
    for body in [
        r#"{"id":1}"#,
        r#"{"status":503}"#,
        r#"{"status":400}"#,
        "oops",
    ] {
        host.publish("Order.Created", body).await;
    }
    let dead = host
        .wait_real("two dead letters", Duration::from_secs(30), || async {
            let dlq = host.dead_letters().await;
            (dlq.len() == 2).then_some(dlq)
        })
        .await;
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|m| m.dead_letter_reason.clone().unwrap_or_default())
        .collect();
    reasons.sort();
    assert!(
        reasons[0].contains("refused the event: 400 Bad Request"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("the body is not JSON"), "{reasons:?}");
    let left = host
        .wait_real("the ok one deleted", Duration::from_secs(30), || async {
            let q = host.queue().await;
            (q.len() == 1).then_some(q)
        })
        .await;
    assert!(
        String::from_utf8_lossy(&left[0].body).contains("503"),
        "{left:?}"
    );
    assert!(
        !left[0].visible,
        "retried after its Retry-After, not at once"
    );
    let received = received.lock().expect("received").clone();
    assert_eq!(
        received.len(),
        3,
        "no request for the body that is not JSON: {received:?}"
    );
    for (key, posted) in &received {
        assert_eq!(key, posted["id"].as_str().unwrap_or_default(), "{posted}");
        assert_eq!(posted["event"], "Order.Created.receiver");
    }
    host.stop().await;
}

/// Messages that arrive together are stored (one transaction per batch); a body that is not JSON is
/// dead-lettered on its own and the rest of its batch is stored.
#[tokio::test(start_paused = true)]
async fn sqlite_batch_stores_each_json_event_and_dead_letters_what_is_not_json() {
    let host = InProcess::start(
        "visibility_timeout = 30",
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"sqlite-batch\"\nconfig = { path = \"{scratch}/orders.db\" }\n[bindings.batch]\nmax_size = 10\nmax_wait_ms = 100\n",
    )
    .await;
    for i in 0..5 {
        host.publish("Order.Created", &format!(r#"{{"id":{i}}}"#))
            .await;
    }
    host.publish("Order.Created", "oops").await;
    host.wait_for("all settled", Duration::from_secs(60), || async {
        (host.queue().await.is_empty() && host.dead_letters().await.len() == 1).then_some(())
    })
    .await;
    let db = rusqlite::Connection::open(host.scratch.path("orders.db")).expect("the database");
    let rows: i64 = db
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 5);
    let ids: Vec<String> = {
        let mut statement = db
            .prepare("SELECT body FROM events ORDER BY body")
            .expect("select");
        statement
            .query_map([], |r| r.get(0))
            .expect("rows")
            .map(|r| r.expect("a row"))
            .collect()
    };
    assert_eq!(ids[0], r#"{"id":0}"#);
    let reason = host.dead_letters().await[0]
        .dead_letter_reason
        .clone()
        .unwrap_or_default();
    assert!(reason.contains("the body is not JSON"), "{reason}");
    host.stop().await;
}
