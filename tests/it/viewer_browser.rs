//! A real browser (headless Chromium driven through chromedriver) opens a run page
//! with a token link, sees the progress move while progress commands arrive, and saves the
//! screenshot (target/tmp/viewer-run.png; docs/viewer.md shows a copy, docs/viewer-run.png). `scripts/test` installs Debian's `chromium`
//! and `chromium-driver`.

use std::process::Stdio;

use fantoccini::{ClientBuilder, Locator};
use serde_json::json;
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::helpers::{progress, wait_for, wait_until, TestApp, DEADLINE};
use crate::viewer_api::Viewer;

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver is installed (apt-get install chromium chromium-driver; scripts/test does it)");
        wait_until("chromedriver to listen", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn text_of(client: &fantoccini::Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the element `css` shows `expected`.
async fn wait_for_text(client: &fantoccini::Client, css: &str, expected: &str) {
    wait_for(&format!("{css} to show {expected:?}"), DEADLINE, || async {
        let text = text_of(client, css).await;
        if text.contains(expected) {
            Ok(())
        } else {
            Err(format!("{css} shows {text:?}"))
        }
    })
    .await
}

#[sqlx::test]
async fn a_browser_follows_a_runs_progress_live_from_a_token_link(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let viewer = Viewer::spawn(pool).await;
    let run_id = app.create_policy_run(42).await;
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "running"}),
    ))
    .await;
    app.publish(&progress(
        "increment_summary_counts",
        run_id,
        json!({"counts": {"total": 10}}),
    ))
    .await;
    app.wait_for_run(run_id, "the total", |r| r.summary_counts.get("total") == 10)
        .await;

    // The WebDriver client links two rustls crypto providers (ring, aws-lc-rs); pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let driver = Driver::start().await;
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--window-size=1100,900"]}),
    );
    let client = ClientBuilder::rustls()
        .unwrap()
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a headless Chromium session");

    let token = viewer.token(1, Some(vec![10]));
    client
        .goto(&format!("{}/runs/{run_id}?token={token}", viewer.base))
        .await
        .unwrap();
    // Signed in by cookie, and the token is gone from the address bar.
    let url = client.current_url().await.unwrap();
    assert_eq!(url.path(), format!("/runs/{run_id}"));
    assert!(url.query().is_none(), "{url}");
    wait_for_text(&client, "#progress-text", "0 / 10").await;
    wait_for_text(&client, "#live", "live").await;

    // Progress commands arrive; the open page follows them without a reload.
    for done in 1..=6 {
        app.publish(&progress(
            "increment_summary_counts",
            run_id,
            json!({"counts": {"processed": 1, "succeeded": 1}}),
        ))
        .await;
        wait_for_text(&client, "#progress-text", &format!("{done} / 10")).await;
    }
    wait_for_text(&client, "#progress-text", "6 / 10 (60%)").await;
    let bar = client
        .execute(
            "return document.getElementById('progress-bar').value",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(bar, json!(60));
    let screenshot = client.screenshot().await.unwrap();
    assert!(screenshot.starts_with(b"\x89PNG"));
    std::fs::write(
        concat!(env!("CARGO_TARGET_TMPDIR"), "/viewer-run.png"),
        &screenshot,
    )
    .unwrap();

    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": "succeeded"}),
    ))
    .await;
    wait_for_text(&client, "#run-status", "completed").await;
    wait_for_text(&client, "#run-outcome", "succeeded").await;
    wait_for_text(&client, "#live", "completed").await;
    client.close().await.unwrap();
    app.shutdown().await;
}
