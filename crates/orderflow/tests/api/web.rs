//! The browser front over plain HTTP: security headers, cookies, CSRF,
//! signing in and out (the API's own sessions), admin pages, assets. The
//! pages themselves are driven in a real browser by `tests/browser.rs`.

use reqwest::{Response, StatusCode};

use crate::helpers::{TestApp, spawn_app};
use crate::support::{ADMIN_EMAIL, ADMIN_PASSWORD};

/// The cookies a browser keeps, as `name=value` pairs.
#[derive(Default)]
struct Jar(Vec<(String, String)>);

impl Jar {
    fn take(&mut self, response: &Response) {
        for header in response.headers().get_all("set-cookie") {
            let text = header.to_str().unwrap();
            let (pair, _) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            self.0.retain(|(n, _)| n != name);
            if !value.is_empty() {
                self.0.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn get(app: &TestApp, jar: &mut Jar, path: &str) -> Response {
    let response = app
        .http
        .get(app.url(path))
        .header("cookie", jar.header())
        .send()
        .await
        .unwrap();
    jar.take(&response);
    response
}

async fn post(app: &TestApp, jar: &mut Jar, path: &str, form: &[(&str, &str)]) -> Response {
    let response = app
        .http
        .post(app.url(path))
        .header("cookie", jar.header())
        .form(form)
        .send()
        .await
        .unwrap();
    jar.take(&response);
    response
}

/// A browser that has loaded the home page (and got its CSRF cookie), then
/// was given the cookie `name` holding `token`.
async fn browser_holding(app: &TestApp, name: &str, token: &str) -> Jar {
    let mut jar = Jar::default();
    get(app, &mut jar, "/").await;
    jar.0.push((name.into(), token.into()));
    jar
}

/// The log-in form sent as the admin, with `csrf` and `next`.
async fn admin_signs_in(app: &TestApp, jar: &mut Jar, csrf: &str, next: &str) -> Response {
    post(
        app,
        jar,
        "/login",
        &[
            ("email", ADMIN_EMAIL),
            ("password", ADMIN_PASSWORD),
            ("csrf", csrf),
            ("next", next),
        ],
    )
    .await
}

fn set_cookies(response: &Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn pages_carry_a_strict_policy_and_a_csrf_cookie() {
    let app = spawn_app().await;
    let mut jar = Jar::default();
    let home = get(&app, &mut jar, "/").await;
    assert_eq!(home.status(), StatusCode::OK);
    let policy = home.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"),
        "{policy}"
    );
    assert_eq!(home.headers()["x-content-type-options"], "nosniff");
    let csrf = set_cookies(&home)
        .into_iter()
        .find(|c| c.starts_with("of_csrf="))
        .expect("a CSRF cookie");
    assert!(
        csrf.contains("HttpOnly") && csrf.contains("SameSite=Lax"),
        "{csrf}"
    );
    assert!(!csrf.contains("Secure"), "not behind TLS: {csrf}");
    let html = home.text().await.unwrap();
    assert!(html.contains(&format!("content=\"{}\"", jar.get("of_csrf").unwrap())));
    assert!(
        !html.contains("<script>") && !html.contains(" style="),
        "no inline script or style"
    );

    // Behind TLS (the proxy says so), cookies are Secure.
    let tls = app
        .http
        .get(app.url("/"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert!(set_cookies(&tls).iter().all(|c| c.contains("Secure")));

    // Assets: under a digest of their content, cached for a year.
    let css = html
        .split('"')
        .find(|part| part.starts_with("/assets/site-"))
        .expect("the stylesheet's URL")
        .to_owned();
    let asset = get(&app, &mut jar, &css).await;
    assert_eq!(asset.status(), StatusCode::OK);
    assert!(
        asset.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert_eq!(
        get(&app, &mut jar, "/assets/site-000000000000.css")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn signing_in_and_out_is_the_apis_session_and_every_form_needs_its_token() {
    let app = spawn_app().await;
    let mug = app.create_product("WEB-1", 500, 5).await;
    let mut jar = Jar::default();
    // Signed out: the cart sends to the log-in page and back.
    let cart = get(&app, &mut jar, "/cart").await;
    assert_eq!(cart.status(), StatusCode::SEE_OTHER);
    assert_eq!(cart.headers()["location"], "/login?next=%2Fcart");
    let csrf = jar.get("of_csrf").unwrap().to_owned();

    // A form without the token, or with another, changes nothing.
    let forged = post(
        &app,
        &mut jar,
        "/login",
        &[
            ("email", ADMIN_EMAIL),
            ("password", ADMIN_PASSWORD),
            ("csrf", "forged"),
        ],
    )
    .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(jar.get("of_access").is_none());
    let wrong = post(
        &app,
        &mut jar,
        "/login",
        &[
            ("email", ADMIN_EMAIL),
            ("password", "not the password"),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(
        wrong.text().await.unwrap().contains("role=\"alert\""),
        "the form again, saying why"
    );

    let signed_in = admin_signs_in(&app, &mut jar, &csrf, "/console").await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(signed_in.headers()["location"], "/console?done=signed-in");
    for cookie in set_cookies(&signed_in) {
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
            "{cookie}"
        );
    }
    let access = jar.get("of_access").expect("an access token").to_owned();
    assert_eq!(
        get(&app, &mut jar, "/console").await.status(),
        StatusCode::OK
    );
    // The cookie holds an API token: the API takes it as it is.
    let me = app.get_as(&access, "/api/v1/me/sessions").await;
    assert_eq!(me.status(), StatusCode::OK);

    // A next page elsewhere is not followed.
    let elsewhere = admin_signs_in(&app, &mut jar, &csrf, "//evil.example/").await;
    assert_eq!(elsewhere.headers()["location"], "/?done=signed-in");

    let forged_add = post(
        &app,
        &mut jar,
        "/cart/add",
        &[
            ("product_id", &mug.id.to_string()),
            ("quantity", "1"),
            ("csrf", "forged"),
        ],
    )
    .await;
    assert_eq!(forged_add.status(), StatusCode::FORBIDDEN);
    let access = jar.get("of_access").unwrap().to_owned();
    let out = post(&app, &mut jar, "/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(
        jar.get("of_access").is_none() && jar.get("of_refresh").is_none(),
        "cookies cleared"
    );
    // Logged out like the API's logout: the token is dead everywhere.
    let after = app.get_as(&access, "/api/v1/me/sessions").await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_expired_access_cookie_is_renewed_from_the_refresh_cookie() {
    let app = spawn_app().await;
    let shopper = app.shopper("Renewed").await;
    // A browser whose access token is gone (expired) keeps its refresh one.
    let mut jar = browser_holding(&app, "of_refresh", &shopper.refresh_token).await;
    let account = get(&app, &mut jar, "/account").await;
    assert_eq!(
        account.status(),
        StatusCode::OK,
        "signed in again from the refresh token"
    );
    assert!(jar.get("of_access").is_some());
    let rotated = jar.get("of_refresh").unwrap().to_owned();
    assert_ne!(
        rotated, shopper.refresh_token,
        "rotated, as POST /auth/refresh does"
    );
    // The old refresh token is spent: presenting it again is reuse, and
    // the browser holding it is signed out.
    let mut stale = browser_holding(&app, "of_refresh", &shopper.refresh_token).await;
    let refused = get(&app, &mut stale, "/account").await;
    assert_eq!(refused.status(), StatusCode::SEE_OTHER);
    assert!(
        stale.get("of_refresh").is_none(),
        "the spent token's cookie is cleared"
    );
}

#[tokio::test]
async fn the_console_is_for_admins_only() {
    let app = spawn_app().await;
    let shopper = app.shopper("Curious").await;
    let mut jar = browser_holding(&app, "of_access", &shopper.token).await;
    let console = get(&app, &mut jar, "/console").await;
    assert_eq!(console.status(), StatusCode::FORBIDDEN);
    let csrf = jar.get("of_csrf").unwrap().to_owned();
    let replay = post(
        &app,
        &mut jar,
        &format!("/console/dlq/{}/replay", uuid::Uuid::now_v7()),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(replay.status(), StatusCode::FORBIDDEN);
    let missing = get(
        &app,
        &mut jar,
        &format!("/products/{}", uuid::Uuid::now_v7()),
    )
    .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(
        missing.text().await.unwrap().contains("<h1>"),
        "an HTML error page"
    );
}
