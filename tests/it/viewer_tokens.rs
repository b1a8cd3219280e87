//! The viewer's tokens fail closed (a null tenant list, a token not valid yet) and a token link
//! never silently replaces a signed-in browser's sign-in: over real HTTP.

use operation_runs::http::auth::{Claims, TokenKeys};
use reqwest::header::{CACHE_CONTROL, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{seed_scopes, DEADLINE};
use crate::viewer_api::{error_code, insert_run, Viewer, SECRET};

fn now() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(DEADLINE)
        .build()
        .unwrap()
}

/// A token of these raw claims, signed with the viewer's secret.
fn raw_token(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn token(sub: &str, tenant_ids: Option<Vec<i64>>, lifetime: u64) -> String {
    TokenKeys::new(SECRET).unwrap().issue(&Claims {
        workspace_id: 1,
        tenant_ids,
        run_id: None,
        exp: now() + lifetime,
        sub: Some(sub.into()),
        grants: None,
    })
}

async fn list(viewer: &Viewer, token: &str) -> (StatusCode, Value) {
    let response = http()
        .get(format!("{}/v1/runs", viewer.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn seeded(pool: PgPool) -> (Viewer, i64) {
    seed_scopes(&pool).await;
    let run = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("running", "pending"),
        1,
        json!({}),
    )
    .await;
    (Viewer::spawn(pool).await, run)
}

#[sqlx::test]
async fn a_token_whose_tenant_list_is_null_is_refused_not_widened_to_the_workspace(pool: PgPool) {
    let (viewer, run) = seeded(pool).await;
    let exp = now() + 600;
    let null = raw_token(json!({"workspace_id": 1, "tenant_ids": null, "exp": exp}));
    let (status, body) = list(&viewer, &null).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(error_code(&body), "invalid_token", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tenant_ids is null"),
        "{body}"
    );
    // Nor does it sign a browser in.
    let page = http()
        .get(format!("{}/runs/{run}?token={null}", viewer.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::UNAUTHORIZED);
    assert!(page.headers().get(SET_COOKIE).is_none());

    // Absent: the whole workspace; empty: nothing.
    let absent = raw_token(json!({"workspace_id": 1, "exp": exp}));
    let (status, body) = list(&viewer, &absent).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["runs"].as_array().unwrap().len(), 1, "{body}");
    let empty = raw_token(json!({"workspace_id": 1, "tenant_ids": [], "exp": exp}));
    let (status, body) = list(&viewer, &empty).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["runs"].as_array().unwrap().len(), 0, "{body}");
}

#[sqlx::test]
async fn a_token_not_valid_yet_by_nbf_or_iat_is_refused_beyond_the_leeway(pool: PgPool) {
    let (viewer, run) = seeded(pool).await;
    let exp = now() + 7200;
    for claim in ["nbf", "iat"] {
        let later = raw_token(json!({"workspace_id": 1, "exp": exp, claim: now() + 3600}));
        let (status, body) = list(&viewer, &later).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{claim}: {body}");
        assert_eq!(error_code(&body), "invalid_token", "{claim}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("not valid yet") && message.contains(claim),
            "{message}"
        );
        let page = http()
            .get(format!("{}/runs/{run}?token={later}", viewer.base))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::UNAUTHORIZED, "{claim}");
        assert!(page.headers().get(SET_COOKIE).is_none(), "{claim}");

        // A clock a little ahead of ours (within the leeway `exp` has too) and the past: fine.
        for at in [now() + 2, now() - 600] {
            let fine = raw_token(json!({"workspace_id": 1, "exp": exp, claim: at}));
            assert_eq!(list(&viewer, &fine).await.0, StatusCode::OK, "{claim} {at}");
        }
    }
}

/// `GET path` with the browser's cookie `cookie` (the `name=value` pair), if any.
async fn get_with_cookie(viewer: &Viewer, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = http().get(format!("{}{path}", viewer.base));
    if let Some(c) = cookie {
        request = request.header("cookie", c);
    }
    request.send().await.unwrap()
}

/// The `name=value` of the answer's sign-in cookie, if it sets one.
fn set_cookie(response: &reqwest::Response) -> Option<String> {
    let value = response.headers().get(SET_COOKIE)?.to_str().unwrap();
    assert!(value.contains("SameSite=Lax"), "{value}");
    assert!(value.contains("HttpOnly"), "{value}");
    Some(value.split_once(';').unwrap().0.to_owned())
}

fn cookie_of(token: &str) -> String {
    format!("oprun_token={token}")
}

/// The value of hidden input `name` in a page's form (the first).
pub(crate) fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("{name} in {html}"))
        + marker.len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end].replace("&amp;", "&")
}

#[sqlx::test]
async fn a_link_with_another_token_never_replaces_the_browsers_sign_in_by_a_get(pool: PgPool) {
    let (viewer, run) = seeded(pool).await;
    let ada = token("ada", Some(vec![10]), 3600);
    let mallory = token("mallory", None, 3600);
    let path = format!("/runs/{run}");

    // No cookie: the link signs in and drops the token from the address.
    let first = get_with_cookie(&viewer, &format!("{path}?token={ada}"), None).await;
    assert!(first.status().is_redirection(), "{}", first.status());
    assert_eq!(first.headers()[LOCATION], path.as_str());
    assert_eq!(set_cookie(&first), Some(cookie_of(&ada)));

    // Another bearer's link: a page naming both, the cookie untouched, the data not shown.
    let other = get_with_cookie(
        &viewer,
        &format!("{path}?token={mallory}"),
        Some(&cookie_of(&ada)),
    )
    .await;
    assert_eq!(other.status(), StatusCode::OK);
    assert!(other.headers().get(SET_COOKIE).is_none());
    assert_eq!(other.headers()[CACHE_CONTROL], "no-store");
    assert_eq!(other.headers()["referrer-policy"], "same-origin");
    let html = other.text().await.unwrap();
    for shown in [
        "Which sign-in?",
        "<strong>ada</strong> · workspace 1 · tenants 10",
        "<strong>mallory</strong> · workspace 1 · all tenants",
        &format!("<a id=\"stay\" href=\"{path}\">Stay signed in as ada</a>"),
        "action=\"/sign-in\"",
        "Switch to this link's sign-in (mallory)",
    ] {
        assert!(html.contains(shown), "{shown} in {html}");
    }
    assert!(
        !html.contains(&ada),
        "the browser's own token is on the page"
    );
    assert!(
        !html.contains(&format!("#{run}</small>")),
        "the run is shown: {html}"
    );
    // Staying: the page as the browser's sign-in.
    let stay = get_with_cookie(&viewer, &path, Some(&cookie_of(&ada))).await;
    assert_eq!(stay.status(), StatusCode::OK);
    assert!(stay
        .text()
        .await
        .unwrap()
        .contains(&format!("#{run}</small>")));

    // Another scope of the same bearer is another sign-in too.
    let wider = token("ada", None, 3600);
    let choice = get_with_cookie(
        &viewer,
        &format!("{path}?token={wider}"),
        Some(&cookie_of(&ada)),
    )
    .await;
    assert_eq!(choice.status(), StatusCode::OK);
    assert!(choice.headers().get(SET_COOKIE).is_none());

    // The same token: nothing to do. The same sign-in lasting longer: renewed; shorter: kept.
    let same = get_with_cookie(
        &viewer,
        &format!("{path}?token={ada}"),
        Some(&cookie_of(&ada)),
    )
    .await;
    assert!(same.status().is_redirection());
    assert!(same.headers().get(SET_COOKIE).is_none());
    let longer = token("ada", Some(vec![10]), 7200);
    let renewed = get_with_cookie(
        &viewer,
        &format!("{path}?token={longer}"),
        Some(&cookie_of(&ada)),
    )
    .await;
    assert!(renewed.status().is_redirection());
    assert_eq!(set_cookie(&renewed), Some(cookie_of(&longer)));
    let shorter = token("ada", Some(vec![10]), 600);
    let kept = get_with_cookie(
        &viewer,
        &format!("{path}?token={shorter}"),
        Some(&cookie_of(&longer)),
    )
    .await;
    assert!(kept.status().is_redirection());
    assert!(kept.headers().get(SET_COOKIE).is_none());

    // A cookie that no longer signs anyone in (expired, or of another secret) is replaced.
    let expired = TokenKeys::new(SECRET).unwrap().issue(&Claims {
        workspace_id: 1,
        tenant_ids: None,
        run_id: None,
        exp: now() - 600,
        sub: Some("ada".into()),
        grants: None,
    });
    let replaced = get_with_cookie(
        &viewer,
        &format!("{path}?token={mallory}"),
        Some(&cookie_of(&expired)),
    )
    .await;
    assert!(replaced.status().is_redirection());
    assert_eq!(set_cookie(&replaced), Some(cookie_of(&mallory)));
}

#[sqlx::test]
async fn switching_sign_in_takes_a_same_origin_post_with_the_choice_pages_proof(pool: PgPool) {
    let (viewer, run) = seeded(pool).await;
    let ada = token("ada", Some(vec![10]), 3600);
    let mallory = token("mallory", None, 3600);
    let path = format!("/runs/{run}?x=1");
    let choice = get_with_cookie(
        &viewer,
        &format!("/runs/{run}?token={mallory}&x=1"),
        Some(&cookie_of(&ada)),
    )
    .await
    .text()
    .await
    .unwrap();
    let (link, proof, next) = (
        hidden(&choice, "token"),
        hidden(&choice, "proof"),
        hidden(&choice, "next"),
    );
    assert_eq!(
        (link.as_str(), next.as_str()),
        (mallory.as_str(), path.as_str())
    );

    let post = |fields: Vec<(&'static str, String)>,
                cookie: Option<String>,
                headers: Vec<(&'static str, String)>| {
        let base = viewer.base.clone();
        async move {
            let mut request = http().post(format!("{base}/sign-in")).form(&fields);
            if let Some(c) = cookie {
                request = request.header("cookie", c);
            }
            for (k, v) in headers {
                request = request.header(k, v);
            }
            request.send().await.unwrap()
        }
    };
    let form = || {
        vec![
            ("token", link.clone()),
            ("proof", proof.clone()),
            ("next", next.clone()),
        ]
    };
    let same_origin = || vec![("origin", viewer.base.clone())];
    let browser = || Some(cookie_of(&ada));

    // Refused, the cookie untouched: from another origin (by Origin or by Sec-Fetch-Site), with
    // neither header, without the proof, without the browser's cookie (another site's form:
    // SameSite=Lax keeps it back), with another browser's cookie, with a proof made up.
    let refusals: Vec<(&str, reqwest::Response)> = vec![
        (
            "another origin",
            post(
                form(),
                browser(),
                vec![("origin", "http://evil.example".into())],
            )
            .await,
        ),
        (
            "another site by fetch metadata",
            post(
                form(),
                browser(),
                vec![("sec-fetch-site", "cross-site".into())],
            )
            .await,
        ),
        (
            "same site but not same origin",
            post(
                form(),
                browser(),
                vec![
                    ("sec-fetch-site", "same-site".into()),
                    ("origin", viewer.base.clone()),
                ],
            )
            .await,
        ),
        (
            "fetch metadata contradicted by Origin",
            post(
                form(),
                browser(),
                vec![
                    ("sec-fetch-site", "same-origin".into()),
                    ("origin", "http://evil.example".into()),
                ],
            )
            .await,
        ),
        (
            "an opaque origin",
            post(form(), browser(), vec![("origin", "null".into())]).await,
        ),
        ("no origin at all", post(form(), browser(), vec![]).await),
        (
            "no proof",
            post(
                vec![("token", link.clone()), ("next", next.clone())],
                browser(),
                same_origin(),
            )
            .await,
        ),
        ("no cookie", post(form(), None, same_origin()).await),
        (
            "another browser's cookie",
            post(
                form(),
                Some(cookie_of(&token("eve", None, 3600))),
                same_origin(),
            )
            .await,
        ),
        (
            "a made-up proof",
            post(
                vec![
                    ("token", link.clone()),
                    ("proof", format!("{}.{}", now() + 600, "00".repeat(32))),
                    ("next", next.clone()),
                ],
                browser(),
                same_origin(),
            )
            .await,
        ),
        (
            "another token than the proof's",
            post(
                vec![
                    ("token", token("eve", None, 3600)),
                    ("proof", proof.clone()),
                    ("next", next.clone()),
                ],
                browser(),
                same_origin(),
            )
            .await,
        ),
    ];
    for (case, response) in refusals {
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{case}");
        assert!(response.headers().get(SET_COOKIE).is_none(), "{case}");
    }
    // Never by a GET.
    let get = get_with_cookie(&viewer, "/sign-in", Some(&cookie_of(&ada))).await;
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(get.headers().get(SET_COOKIE).is_none());

    // The page's own form, from the page's origin: switched, back to the page.
    let switched = post(form(), browser(), same_origin()).await;
    assert_eq!(switched.status(), StatusCode::SEE_OTHER);
    assert_eq!(switched.headers()[LOCATION], path.as_str());
    assert_eq!(set_cookie(&switched), Some(cookie_of(&mallory)));
    // Fetch metadata alone (a browser that sends no Origin) is enough too.
    let switched = post(
        form(),
        browser(),
        vec![("sec-fetch-site", "same-origin".into())],
    )
    .await;
    assert_eq!(switched.status(), StatusCode::SEE_OTHER);
    // What Chromium sends under `Referrer-Policy: no-referrer`: an opaque Origin, with the
    // fetch metadata.
    let switched = post(
        form(),
        browser(),
        vec![
            ("sec-fetch-site", "same-origin".into()),
            ("origin", "null".into()),
        ],
    )
    .await;
    assert_eq!(switched.status(), StatusCode::SEE_OTHER);
    // The form cannot send the browser elsewhere.
    for away in [
        "//evil.example/runs",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let switched = post(
            vec![
                ("token", link.clone()),
                ("proof", proof.clone()),
                ("next", away.into()),
            ],
            browser(),
            same_origin(),
        )
        .await;
        assert_eq!(switched.status(), StatusCode::SEE_OTHER, "{away}");
        assert_eq!(switched.headers()[LOCATION], "/runs", "{away}");
    }
}

fn run_token(run_id: i64, tenant_ids: Option<Vec<i64>>) -> String {
    TokenKeys::new(SECRET).unwrap().issue(&Claims {
        workspace_id: 1,
        tenant_ids,
        run_id: Some(run_id),
        exp: now() + 3600,
        sub: Some("ada".into()),
        grants: None,
    })
}

/// A token for one run reads that run (its detail, events, live stream, page, and a list that
/// holds it alone) and answers every other run of the same tenant exactly like a missing one.
#[sqlx::test]
async fn a_token_for_one_run_reads_that_run_and_nothing_else(pool: PgPool) {
    let (viewer, run) = seeded(pool.clone()).await;
    let sibling = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("queued", "pending"),
        1,
        json!({}),
    )
    .await;
    let token = run_token(run, Some(vec![10]));
    let workspace_wide = run_token(run, None);
    for token in [&token, &workspace_wide] {
        let (status, body) = list(&viewer, token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let ids: Vec<i64> = body["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, vec![run]);
        for path in [
            format!("/v1/runs/{run}"),
            format!("/v1/runs/{run}/events"),
            format!("/runs/{run}"),
        ] {
            let (status, _, body) = viewer.get(&path, Some(token)).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
        }
        let live = http()
            .get(format!("{}/v1/runs/{run}/live", viewer.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(live.status(), StatusCode::OK);
        drop(live);
        for path in [
            format!("/v1/runs/{sibling}"),
            format!("/v1/runs/{sibling}/events"),
            format!("/v1/runs/{sibling}/live"),
            "/v1/runs/999999".to_owned(),
        ] {
            let (status, body) = viewer.json(&path, token).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
            assert_eq!(error_code(&body), "not_found", "{path}");
        }
        let (status, _, _) = viewer.get(&format!("/runs/{sibling}"), Some(token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    // A run outside the token's tenants is refused even when the token names it.
    let foreign = insert_run(
        &pool,
        1,
        Some(11),
        "policy.sync",
        ("queued", "pending"),
        1,
        json!({}),
    )
    .await;
    let (status, _) = viewer
        .json(
            &format!("/v1/runs/{foreign}"),
            &run_token(foreign, Some(vec![10])),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Links to one run each, of the same bearer and tenants, follow each other in one browser: the
/// second link's run is shown, never a 404 from the first link's sign-in; a sign-in for every
/// run stays when a link to one of its runs is followed.
#[sqlx::test]
async fn a_link_to_another_run_of_the_same_bearer_shows_that_run(pool: PgPool) {
    let (viewer, first) = seeded(pool.clone()).await;
    let second = insert_run(
        &pool,
        1,
        Some(10),
        "policy.sync",
        ("queued", "pending"),
        1,
        json!({}),
    )
    .await;
    let (a, b) = (
        run_token(first, Some(vec![10])),
        run_token(second, Some(vec![10])),
    );
    let signed = get_with_cookie(&viewer, &format!("/runs/{first}?token={a}"), None).await;
    assert_eq!(set_cookie(&signed), Some(cookie_of(&a)));
    let next = get_with_cookie(
        &viewer,
        &format!("/runs/{second}?token={b}"),
        Some(&cookie_of(&a)),
    )
    .await;
    assert!(next.status().is_redirection(), "{}", next.status());
    assert_eq!(set_cookie(&next), Some(cookie_of(&b)));
    let shown = get_with_cookie(&viewer, &format!("/runs/{second}"), Some(&cookie_of(&b))).await;
    assert_eq!(shown.status(), StatusCode::OK);

    let wide = token("ada", Some(vec![10]), 3600);
    let kept = get_with_cookie(
        &viewer,
        &format!("/runs/{second}?token={b}"),
        Some(&cookie_of(&wide)),
    )
    .await;
    assert!(kept.status().is_redirection(), "{}", kept.status());
    assert!(kept.headers().get(SET_COOKIE).is_none());
}
