//! A real browser (headless Chromium driven through chromedriver) opens a run page
//! with a token link, sees the progress move and failures arrive while progress commands come
//! in (a producer's markup in a failure shown as text, never run), reads the page and the list
//! at 390 px wide without sideways scrolling, and saves the screenshots
//! (target/tmp/viewer-run.png, viewer-run-390.png, viewer-list-390.png; docs/viewer.md shows a
//! copy of the first, docs/viewer-run.png); an operator cancels a run with one click on its
//! page. `scripts/test` installs Debian's `chromium` and `chromium-driver`.

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
/// Clicks the element `locator` finds (it must be there).
async fn click(client: &fantoccini::Client, locator: Locator<'_>) {
    client.find(locator).await.unwrap().click().await.unwrap();
}

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

    app.publish(&progress(
        "append_failures",
        run_id,
        json!({"failures": [{"code": "graph.throttled", "message": "429 from upstream", "item": "device-7"}]}),
    ))
    .await;
    wait_for_text(&client, "#failures-total", "1 failure").await;

    // Readable on a desktop and at 390 px wide (the screenshots: target/tmp/viewer-run*.png).
    for (width, height, file) in [
        (1100, 1500, "viewer-run.png"),
        (390, 900, "viewer-run-390.png"),
    ] {
        client.set_window_size(width, height).await.unwrap();
        let screenshot = client.screenshot().await.unwrap();
        assert!(screenshot.starts_with(b"\x89PNG"));
        std::fs::write(
            format!("{}/{file}", env!("CARGO_TARGET_TMPDIR")),
            &screenshot,
        )
        .unwrap();
        let overflow = client
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            overflow,
            json!(0),
            "the page scrolls sideways at {width} px"
        );
    }

    // A producer-controlled failure arrives live: the script writes it as text, never as HTML.
    let hostile =
        "<img src=x onerror=\"document.title='owned'\"><script>document.title='owned'</script>";
    app.publish(&progress(
        "append_failures",
        run_id,
        json!({"failures": [
            {"code": "graph.denied", "message": hostile, "item": hostile}]}),
    ))
    .await;
    wait_for_text(
        &client,
        "#run-failures tbody tr:nth-child(2) td:nth-child(2)",
        hostile,
    )
    .await;
    wait_for_text(&client, "#failures-total", "2 failures").await;
    let injected = client
        .execute(
            "return [document.scripts.length, document.images.length, document.title]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!([1, 0, "Policy sync · operation runs"]));
    wait_for_text(&client, "#timeline li:last-child .changes", "+1 failure").await;

    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": "succeeded"}),
    ))
    .await;
    wait_for_text(&client, "#run-status", "completed").await;
    wait_for_text(&client, "#run-outcome", "succeeded").await;
    wait_for_text(&client, "#live", "completed").await;

    // The list, at 390 px wide: only its table scrolls sideways, never the page.
    client.goto(&format!("{}/runs", viewer.base)).await.unwrap();
    wait_for_text(&client, "#summary", "1 run, 0 failed, 0 running").await;
    let screenshot = client.screenshot().await.unwrap();
    std::fs::write(
        format!("{}/viewer-list-390.png", env!("CARGO_TARGET_TMPDIR")),
        &screenshot,
    )
    .unwrap();
    let overflow = client
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(overflow, json!(0), "the list scrolls sideways at 390 px");
    client.close().await.unwrap();
    app.shutdown().await;
}

/// A page of another site (`localhost`, while the viewer is `127.0.0.1`) holding `links`
/// (`(id, href)`), as the platform's "View run" links are; served until the test ends.
async fn another_site(links: Vec<(&'static str, String)>) -> String {
    let html: String = links
        .iter()
        .map(|(id, href)| format!("<p><a id=\"{id}\" href=\"{href}\">View run</a></p>"))
        .collect();
    let (listener, origin) = another_origin().await;
    serve_page(listener, html);
    format!("{origin}/")
}

/// A listener for the pages of another site (`localhost`, while the viewer is `127.0.0.1`),
/// and its origin.
async fn another_origin() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, format!("http://localhost:{port}"))
}

/// Serves `html` at `/` of `listener` until the test ends.
fn serve_page(listener: tokio::net::TcpListener, html: String) {
    let router = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
}

/// The Laravel package's progress component in a page of the platform (another origin, listed
/// in `--viewer-allowed-origins`), rendered by the example application's Blade view: the
/// browser's `EventSource` reads the viewer's live stream with the run-scoped token of the page,
/// and the `<progress>` element and its text follow the run to its completion without a reload
/// (decision 0088).
#[sqlx::test]
async fn a_platform_page_follows_a_run_through_the_laravel_progress_component(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let (listener, origin) = another_origin().await;
    let viewer = Viewer::spawn_with_origins(pool, &[origin.as_str()]).await;
    let run_id = app.create_policy_run(43).await;
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "running"}),
    ))
    .await;
    app.publish(&progress(
        "increment_summary_counts",
        run_id,
        json!({"counts": {"total": 4}}),
    ))
    .await;

    let render = format!(
        "require 'clients/laravel/example-app/autoload.php';
         $app = require 'clients/laravel/example-app/bootstrap/app.php';
         $app->make(Illuminate\\Contracts\\Console\\Kernel::class)->bootstrap();
         echo view('run', ['runId' => {run_id}, 'workspaceId' => 1, 'tenantId' => 10])->render();"
    );
    let output = Command::new(std::env::var("OPRUN_PHP").unwrap_or_else(|_| "php".into()))
        .args(["-r", &render])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("OPERATION_RUNS_VIEWER_URL", &viewer.base)
        .env("OPERATION_RUNS_API_SECRET", crate::viewer_api::SECRET)
        .output()
        .await
        .expect("php is installed");
    let html = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success() && html.contains("<progress"),
        "{html}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serve_page(listener, html);

    let driver = Driver::start().await;
    let client = headless(&driver).await;
    client.goto(&format!("{origin}/")).await.unwrap();
    let text = "[data-operation-runs-text]";
    wait_for_text(&client, text, "running (0/4)").await;
    for _ in 0..2 {
        app.publish(&progress(
            "increment_summary_counts",
            run_id,
            json!({"counts": {"processed": 1}}),
        ))
        .await;
    }
    wait_for_text(&client, text, "running (2/4)").await;
    let bar = client
        .execute(
            "var p = document.querySelector('progress'); return [p.value, p.max]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(bar, json!([2, 4]));
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": "succeeded", "summary_counts": {"processed": 2}}),
    ))
    .await;
    wait_for_text(&client, text, "completed, succeeded (4/4)").await;
    let outcome = client
        .execute(
            "return document.querySelector('.operation-runs-progress').getAttribute('data-outcome')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(outcome, json!("succeeded"));
    client.close().await.unwrap();
    app.shutdown().await;
}

/// The platform's case: a browser with no sign-in follows a "View run" link from another site
/// and sees the run at once (the cookie is SameSite=Lax: sent on that top-level navigation).
/// A second link of another bearer, followed from the same site, does not replace the
/// sign-in: the page names both; the reader switches with the page's own button.
#[sqlx::test]
async fn a_link_from_another_site_signs_in_at_once_and_another_bearers_link_asks_first(
    pool: PgPool,
) {
    crate::helpers::seed_scopes(&pool).await;
    let run_id = crate::viewer_api::insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("running", "pending"),
        1,
        json!({}),
    )
    .await;
    let viewer = Viewer::spawn(pool).await;
    let ada = viewer.token(1, Some(vec![10]));
    let whole = viewer.token(1, None);
    let platform = another_site(vec![
        ("ada", format!("{}/runs/{run_id}?token={ada}", viewer.base)),
        (
            "other",
            format!("{}/runs/{run_id}?token={whole}", viewer.base),
        ),
    ])
    .await;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let driver = Driver::start().await;
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]}),
    );
    let client = ClientBuilder::rustls()
        .unwrap()
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a headless Chromium session");

    client.goto(&platform).await.unwrap();
    click(&client, Locator::Id("ada")).await;
    wait_for_text(&client, "h1", &format!("#{run_id}")).await;
    let url = client.current_url().await.unwrap();
    assert_eq!(url.path(), format!("/runs/{run_id}"));
    assert!(url.query().is_none(), "{url}");

    // Another bearer's link from the same site: asked, not switched.
    client.goto(&platform).await.unwrap();
    click(&client, Locator::Id("other")).await;
    wait_for_text(&client, "h1", "Which sign-in?").await;
    // The link's token is not left in the address bar (nor the history).
    wait_for("the token to leave the address bar", DEADLINE, || async {
        let url = client.current_url().await.unwrap();
        if url.query().is_none() && url.path() == format!("/runs/{run_id}") {
            Ok(())
        } else {
            Err(url.to_string())
        }
    })
    .await;
    assert!(text_of(&client, "#current-sign-in")
        .await
        .contains("tenants 10"));
    assert!(text_of(&client, "#link-sign-in")
        .await
        .contains("all tenants"));
    // Staying keeps ada's sign-in.
    click(&client, Locator::Id("stay")).await;
    wait_for_text(&client, "h1", &format!("#{run_id}")).await;

    // Switching: the page's own form (a same-origin POST).
    client.goto(&platform).await.unwrap();
    click(&client, Locator::Id("other")).await;
    wait_for_text(&client, "h1", "Which sign-in?").await;
    click(&client, Locator::Css("#switch button")).await;
    wait_for_text(&client, "h1", &format!("#{run_id}")).await;
    // Now signed in for the whole workspace: ada's link asks again.
    client.goto(&platform).await.unwrap();
    click(&client, Locator::Id("ada")).await;
    wait_for_text(&client, "h1", "Which sign-in?").await;
    assert!(text_of(&client, "#current-sign-in")
        .await
        .contains("all tenants"));
    client.close().await.unwrap();
}

/// What the script keeps current without a reload: a list row of an active run refreshes itself
/// once its run moves on (the script reads `/v1/runs/{id}` every 10 s), relative times tick,
/// and a running run's page raises the stalled banner the moment the run has been idle longer
/// than its type usually takes.
#[sqlx::test]
async fn open_pages_keep_rows_times_and_the_stalled_banner_current_without_a_reload(pool: PgPool) {
    crate::helpers::seed_scopes(&pool).await;
    let run_id = crate::viewer_api::insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("running", "pending"),
        1,
        json!({}),
    )
    .await;
    let viewer = Viewer::spawn(pool.clone()).await;
    let token = viewer.token(1, Some(vec![10]));

    let _ = rustls::crypto::ring::default_provider().install_default();
    let driver = Driver::start().await;
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]}),
    );
    let client = ClientBuilder::rustls()
        .unwrap()
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a headless Chromium session");

    // A policy sync usually takes about 5 minutes: idle for 15 s less than that (a run's times
    // set by hand: only `updated_at` matters here), set once the browser runs, so a slow start
    // of Chromium on a loaded machine cannot use up the margin before the first look.
    sqlx::query(
        "UPDATE operation_runs SET created_at = now() - interval '10 seconds',
                started_at = now() - interval '5 seconds', updated_at = now() - interval '5 minutes' + interval '15 seconds' WHERE id = $1",
    )
    .bind(run_id)
    .execute(&pool)
    .await
    .unwrap();
    client
        .goto(&format!("{}/runs/{run_id}?token={token}", viewer.base))
        .await
        .unwrap();
    wait_for_text(&client, "#live", "live").await;
    assert_eq!(text_of(&client, "#stalled").await, "", "not stalled yet");
    wait_for_text(
        &client,
        "#stalled",
        "No progress for 5 min (usually takes about 5 min)",
    )
    .await;

    client.goto(&format!("{}/runs", viewer.base)).await.unwrap();
    let row = format!("tr[data-active-run=\"{run_id}\"]");
    wait_for_text(&client, &format!("{row} .run-status"), "running").await;
    let created = text_of(&client, &format!("{row} time[data-relative]")).await;
    sqlx::query(
        "UPDATE operation_runs SET status = 'completed', outcome = 'failed', completed_at = now(),
                summary_counts = '{\"total\": 4, \"processed\": 4}',
                failure_summary = '[{\"code\": \"graph.denied\", \"message\": \"no\"}]'
         WHERE id = $1",
    )
    .bind(run_id)
    .execute(&pool)
    .await
    .unwrap();
    wait_for_text(&client, "tr .run-status", "completed").await;
    wait_for_text(&client, "tr .run-outcome", "failed").await;
    wait_for_text(&client, "tr .run-progress", "4 / 4 (100%)").await;
    wait_for_text(&client, "tr .run-failures", "1 graph.denied").await;
    let ticked = text_of(&client, "tr time[data-relative]").await;
    assert_ne!(created, ticked, "the relative time did not tick");
    client.close().await.unwrap();
}

/// A headless Chromium session of `driver`.
async fn headless(driver: &Driver) -> fantoccini::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]}),
    );
    ClientBuilder::rustls()
        .unwrap()
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a headless Chromium session")
}

/// An operator signed in by a link granting `operate` clicks Cancel on a queued run's page: the
/// form (with its anti-forgery value) cancels the run and the page comes back saying so.
#[sqlx::test]
async fn an_operator_cancels_a_run_from_its_page_with_one_click(pool: PgPool) {
    crate::helpers::seed_scopes(&pool).await;
    let run_id = crate::viewer_api::insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("queued", "pending"),
        1,
        json!({}),
    )
    .await;
    let viewer = Viewer::spawn(pool.clone()).await;
    let token = viewer.operator_token(1, Some(vec![10]), None);
    let driver = Driver::start().await;
    let client = headless(&driver).await;
    client
        .goto(&format!("{}/runs/{run_id}?token={token}", viewer.base))
        .await
        .unwrap();
    wait_for_text(&client, "#act h2", "Act on this run").await;
    client
        .find(Locator::Css("#act-cancel input[name=reason]"))
        .await
        .unwrap()
        .send_keys("not needed any more")
        .await
        .unwrap();
    click(&client, Locator::Css("#act-cancel button")).await;
    wait_for_text(&client, "#action-result", "Cancel: done").await;
    wait_for_text(&client, "#run-outcome", "cancelled").await;
    assert!(text_of(&client, "#run-actions")
        .await
        .contains("not needed any more"));
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM operation_runs WHERE id = $1")
        .bind(run_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(outcome, "cancelled");
    client.close().await.unwrap();
}
