//! Registration, login, refresh rotation, logout.

use reqwest::StatusCode;

use crate::helpers::{PASSWORD, assert_problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn register_answers_201_then_409_for_the_same_email() {
    let app = spawn_app().await;
    let response = app.register("Ann@Example.com", PASSWORD, "Ann").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["email"], "ann@example.com", "e-mails are normalized");
    assert_eq!(body["name"], "Ann");
    assert!(body["id"].is_string());
    assert!(body.get("password_hash").is_none(), "the hash never leaves");

    let again = app.register("ann@example.com", PASSWORD, "Ann again").await;
    assert_problem(again, 409, "conflict").await;
}

#[tokio::test]
async fn weak_password_and_bad_email_are_422_naming_the_field() {
    let app = spawn_app().await;
    let weak = assert_problem(
        app.register("bob@example.com", "short", "Bob").await,
        422,
        "validation",
    )
    .await;
    assert_eq!(weak["field"], "password");
    let common = assert_problem(
        app.register("bob@example.com", "password123", "Bob").await,
        422,
        "validation",
    )
    .await;
    assert_eq!(common["field"], "password");
    let email = assert_problem(
        app.register("not-an-email", PASSWORD, "Bob").await,
        422,
        "validation",
    )
    .await;
    assert_eq!(email["field"], "email");
    let missing = app
        .http
        .post(app.url("/api/v1/auth/register"))
        .json(&serde_json::json!({"email": "bob@example.com"}))
        .send()
        .await
        .unwrap();
    let body = assert_problem(missing, 422, "malformed-body").await;
    assert!(
        body["detail"].as_str().unwrap().contains("password"),
        "{body}"
    );
}

#[tokio::test]
async fn login_gives_tokens_and_wrong_credentials_get_one_answer() {
    let app = spawn_app().await;
    let shopper = app.shopper("Cem").await;
    let pair = app.tokens(&shopper.email, PASSWORD).await;
    assert_eq!(pair.token_type, "Bearer");
    assert_eq!(pair.expires_in, 900);
    assert_eq!(pair.access_token.split('.').count(), 3, "a JWT");

    let wrong_password = assert_problem(
        app.login(&shopper.email, "wrong password!!", None).await,
        401,
        "unauthorized",
    )
    .await;
    let unknown_email = assert_problem(
        app.login("nobody@example.com", PASSWORD, None).await,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(
        wrong_password["detail"], unknown_email["detail"],
        "an unknown e-mail is indistinguishable"
    );
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_refresh_token_revokes_the_session() {
    let app = spawn_app().await;
    let shopper = app.shopper("Dilek").await;

    let response = app.refresh(&shopper.refresh_token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let rotated: orderflow_api::routes::auth::TokenPairView = response.json().await.unwrap();
    assert_ne!(rotated.refresh_token, shopper.refresh_token);
    assert_eq!(
        app.get_order(&rotated.access_token, uuid::Uuid::now_v7())
            .await
            .status(),
        StatusCode::NOT_FOUND,
        "new access token works"
    );

    // The old refresh token stops working, and replaying it is treated as theft:
    // the session is revoked, so the new refresh token dies too.
    app.assert_refresh_refused(&shopper.refresh_token).await;
    app.assert_refresh_refused(&rotated.refresh_token).await;
    app.assert_refresh_refused("made-up-token").await;
}

#[tokio::test]
async fn logout_revokes_the_access_token_and_the_session() {
    let app = spawn_app().await;
    let shopper = app.shopper("Emma").await;
    let other_device = app.tokens(&shopper.email, PASSWORD).await;

    assert_eq!(
        app.logout(&shopper.token).await.status(),
        StatusCode::NO_CONTENT
    );
    let body = assert_problem(
        app.get_order(&shopper.token, uuid::Uuid::now_v7()).await,
        401,
        "unauthorized",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    app.assert_refresh_refused(&shopper.refresh_token).await;

    // Only that device is logged out.
    assert_eq!(
        app.get_order(&other_device.access_token, uuid::Uuid::now_v7())
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn revocations_survive_a_restart_of_the_process() {
    let app = spawn_app().await;
    let shopper = app.shopper("Fatma").await;
    assert_eq!(
        app.logout(&shopper.token).await.status(),
        StatusCode::NO_CONTENT
    );
    // A second app on the same data dir: same keys, revocations loaded from the database.
    let settings = app.app.settings.clone();
    let restarted = orderflow::App::build(settings).await.unwrap();
    let error = restarted
        .auth
        .authenticate(&shopper.token)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("revoked"), "{error}");
    let fresh = app.tokens(&shopper.email, PASSWORD).await;
    let principal = restarted
        .auth
        .authenticate(&fresh.access_token)
        .await
        .unwrap();
    assert_eq!(
        principal.user_id, shopper.id,
        "tokens signed before the restart still verify"
    );
}

#[tokio::test]
async fn bad_tokens_are_401() {
    let app = spawn_app().await;
    let shopper = app.shopper("Gul").await;
    let path = "/api/v1/orders";
    let no_token = app.get(path).await;
    let body = assert_problem(no_token, 401, "unauthorized").await;
    assert!(body["detail"].as_str().unwrap().contains("Bearer"));
    let mut tampered = shopper.token.clone();
    tampered.pop();
    tampered.push(if shopper.token.ends_with('A') {
        'B'
    } else {
        'A'
    });
    for token in [tampered.as_str(), "not.a.jwt", "garbage"] {
        let response = app.get_as(token, path).await;
        assert_problem(response, 401, "unauthorized").await;
    }
    // alg: none with the same claims.
    let payload = shopper.token.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    let response = app.get_as(&none, path).await;
    assert_problem(response, 401, "unauthorized").await;
}

#[tokio::test]
async fn login_is_rate_limited_per_ip_with_headers() {
    let app = spawn_app_with(&["--auth-rate-per-sec", "1"]).await;
    // A bucket of 10 refilled at 1 per second: 20 attempts at once cannot all pass.
    let attempts = (0..20).map(|_| app.login("nobody@example.com", PASSWORD, None));
    let responses = futures::future::join_all(attempts).await;
    let (limited, passed): (Vec<_>, Vec<_>) = responses
        .into_iter()
        .partition(|r| r.status() == StatusCode::TOO_MANY_REQUESTS);
    assert!(
        !limited.is_empty() && passed.len() >= 10,
        "{} limited, {} passed",
        limited.len(),
        passed.len()
    );
    assert!(
        passed.iter().all(|r| r.headers().contains_key("ratelimit")),
        "every answer carries RateLimit"
    );
    let response = limited.into_iter().next().unwrap();
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        response.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .contains("\"auth\"")
    );
    assert_problem(response, 429, "rate-limited").await;
}

/// `count` logins at once, of unknown accounts, from `forwarded_for` (as
/// `X-Forwarded-For`): how many were refused with 429.
async fn limited_logins(app: &crate::helpers::TestApp, forwarded_for: &str, count: usize) -> usize {
    let attempts = (0..count).map(|_| {
        app.http
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", forwarded_for)
            // A new address each time: the per-account lock-out stays out
            // of it, only the per-IP bucket can refuse.
            .json(&serde_json::json!({
                "email": format!("nobody-{}@example.com", uuid::Uuid::now_v7().simple()),
                "password": PASSWORD,
            }))
            .send()
    });
    futures::future::join_all(attempts)
        .await
        .into_iter()
        .filter(|r| r.as_ref().unwrap().status() == StatusCode::TOO_MANY_REQUESTS)
        .count()
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_rate_limit() {
    // The test client connects from 127.0.0.1: here that is the proxy.
    // A bucket of 10 refilled at 1 per second.
    let app = spawn_app_with(&["--auth-rate-per-sec", "1", "--trusted-proxies", "127.0.0.1"]).await;
    assert!(
        limited_logins(&app, "198.51.100.1", 20).await > 0,
        "one client exhausts its bucket"
    );
    assert_eq!(
        limited_logins(&app, "198.51.100.2", 5).await,
        0,
        "another client behind the same proxy still has its own bucket"
    );
    // A client cannot pick its address: the proxy appends the real one,
    // and the entries left of it are never believed.
    assert!(limited_logins(&app, "198.51.100.2, 198.51.100.1", 5).await > 0);
}

#[tokio::test]
async fn without_trusted_proxies_x_forwarded_for_is_ignored() {
    let app = spawn_app_with(&["--auth-rate-per-sec", "1"]).await;
    assert!(limited_logins(&app, "198.51.100.1", 20).await > 0);
    assert!(
        limited_logins(&app, "198.51.100.2", 5).await > 0,
        "a made-up X-Forwarded-For does not escape the peer's limit"
    );
}
