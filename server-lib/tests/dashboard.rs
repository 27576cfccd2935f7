//! The dashboard over HTTP: login, session cookie, CSRF, escaping, live counters, the link
//! generator. (The browser drives it too: `./tests/run.sh browser`.)

mod common;

use serde_json::json;
use trailmark_server::{ServerBuilder, ServerConfig};

struct Page {
    status: u16,
    cookies: Vec<String>,
    location: Option<String>,
    body: String,
    csp: Option<String>,
}

async fn send(req: reqwest::RequestBuilder) -> Page {
    let resp = req.send().await.unwrap();
    let h = resp.headers().clone();
    Page {
        status: resp.status().as_u16(),
        cookies: h.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect(),
        location: h.get("location").map(|v| v.to_str().unwrap().to_owned()),
        csp: h.get("content-security-policy").map(|v| v.to_str().unwrap().to_owned()),
        body: resp.text().await.unwrap_or_default(),
    }
}

fn cookie_value(page: &Page, name: &str) -> Option<String> {
    page.cookies.iter().find_map(|c| {
        let first = c.split(';').next()?;
        let (k, v) = first.split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_owned())
    })
}

fn field(body: &str, name: &str) -> String {
    let at = body.find(&format!("name=\"{name}\" value=\"")).unwrap_or_else(|| panic!("no {name} field"));
    let rest = &body[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_csrf_escaping_live_counters_and_the_link_generator() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new().with_app("app", "secret").with_admin_key("s3cret-key-0123456789");
    config.reports.scheduler = false;
    let base = common::serve(ServerBuilder::new(config).sqlite(dir.path().join("d.db")).unwrap()).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    // Not signed in: to the login page; the live stream refuses.
    let p = send(client.get(format!("{base}/dashboard"))).await;
    assert_eq!((p.status, p.location.as_deref()), (303, Some("/dashboard/login")));
    assert_eq!(send(client.get(format!("{base}/dashboard/live"))).await.status, 401);

    let login = send(client.get(format!("{base}/dashboard/login"))).await;
    assert_eq!(login.status, 200);
    assert!(login.csp.as_deref().unwrap().contains("script-src 'self'"), "{:?}", login.csp);
    let login_cookie = cookie_value(&login, "tm_login").unwrap();
    assert!(login.cookies[0].contains("HttpOnly") && login.cookies[0].contains("SameSite=Strict"));
    let token = field(&login.body, "csrf");
    let post_login = |key: &str, token: &str, cookie: &str| {
        client
            .post(format!("{base}/dashboard/login"))
            .header("cookie", format!("tm_login={cookie}"))
            .header("origin", base.clone())
            .form(&[("key", key), ("csrf", token)])
    };
    // Wrong key; missing CSRF cookie match; another site's origin.
    let p = send(post_login("wrong", &token, &login_cookie)).await;
    assert_eq!(p.status, 401);
    assert!(p.body.contains("Wrong key"));
    let p = send(post_login("s3cret-key-0123456789", "forged", &login_cookie)).await;
    assert!(p.body.contains("expired") && cookie_value(&p, "tm_dash").is_none());
    let p =
        send(post_login("s3cret-key-0123456789", &token, &login_cookie).header("origin", "https://evil.example")).await;
    assert_eq!(p.status, 403);
    // The right key: a session cookie, HttpOnly and SameSite=Strict.
    let p = send(post_login("s3cret-key-0123456789", &token, &login_cookie)).await;
    assert_eq!((p.status, p.location.as_deref()), (303, Some("/dashboard")));
    let session = cookie_value(&p, "tm_dash").expect("session cookie");
    let set = p.cookies.iter().find(|c| c.starts_with("tm_dash=")).unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/dashboard"), "{set}");
    let cookie = format!("tm_dash={session}");

    // Hostile strings in an event and a campaign name.
    let body = serde_json::to_vec(&json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "type": "app_opened",
        "timestamp": trailmark_core::protocol::format_millis(trailmark_server::now_ms()),
        "anonymous_id": "x<img src=x onerror=alert(1)>",
        "properties": {"note": "<script>window.__xss = 1</script>"},
    }))
    .unwrap();
    assert_eq!(common::signed(&client, &base, body).send().await.unwrap().status(), 200);

    let page = send(client.get(format!("{base}/dashboard")).header("cookie", &cookie)).await;
    assert_eq!(page.status, 200);
    let csrf = field(&page.body, "csrf");
    assert!(!page.body.contains("<script>window"), "raw script in the page");
    assert!(page.body.contains("&lt;script&gt;window.__xss = 1&lt;/script&gt;"));
    assert!(page.body.contains("x&lt;img src=x onerror=alert(1)&gt;"));
    assert!(page.body.contains("id=\"trend-events\""), "the trend charts");
    let journeys = send(client.get(format!("{base}/dashboard/journeys")).header("cookie", &cookie)).await;
    assert_eq!(journeys.status, 200);
    assert!(journeys.body.contains("id=\"funnel-chart\"") && journeys.body.contains("id=\"retention-heatmap\""));
    // The explorer shows what it was asked, as text; a lookup that finds nothing says so.
    let explorer = send(
        client
            .get(format!("{base}/dashboard/attribution?by=anonymous_id&q=%3Cscript%3Ealert(1)%3C%2Fscript%3E"))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(explorer.status, 200);
    assert!(
        explorer.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !explorer.body.contains("<script>alert")
    );
    assert!(explorer.body.contains("No install found"));
    // Every page needs the session.
    for path in ["/dashboard/journeys", "/dashboard/attribution", "/dashboard/campaign/cmp_x"] {
        let p = send(client.get(format!("{base}{path}"))).await;
        assert_eq!((p.status, p.location.as_deref()), (303, Some("/dashboard/login")), "{path}");
    }
    let p = send(client.get(format!("{base}/dashboard/campaign/cmp_nope")).header("cookie", &cookie)).await;
    assert_eq!(p.status, 404);
    assert!(p.csp.is_some(), "an error page is protected too");

    // Forms: no token or a wrong one is refused; with it a campaign and a link are created.
    let form = |path: &str, fields: &[(&str, &str)]| {
        client
            .post(format!("{base}{path}"))
            .header("cookie", &cookie)
            .header("origin", base.clone())
            .form(&fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>())
    };
    let p = send(form("/dashboard/campaigns", &[("name", "X"), ("network", "n")])).await;
    assert_eq!(p.status, 403);
    // A POST that names no origin at all (neither Origin nor Referer) is refused too.
    let bare = client.post(format!("{base}/dashboard/campaigns")).header("cookie", &cookie).form(&[
        ("csrf", csrf.as_str()),
        ("name", "X"),
        ("network", "n"),
    ]);
    assert_eq!(send(bare).await.status, 403);
    let p = send(form("/dashboard/campaigns", &[("csrf", "nope"), ("name", "X"), ("network", "n")])).await;
    assert_eq!(p.status, 403);
    let p =
        send(form("/dashboard/campaigns", &[("csrf", &csrf), ("name", "<b>Spring</b>"), ("network", "meta")])).await;
    assert_eq!(p.status, 303);
    let page = send(client.get(format!("{base}/dashboard")).header("cookie", &cookie)).await;
    assert!(page.body.contains("&lt;b&gt;Spring&lt;/b&gt;"), "the campaign, escaped");
    let campaign = {
        let form = &page.body[page.body.find("id=\"link-form\"").unwrap()..];
        let rest = &form[form.find("name=\"campaign_id\"").unwrap()..];
        let v = rest.find("value=\"").unwrap() + 7;
        rest[v..v + rest[v..].find('"').unwrap()].to_owned()
    };
    let p = send(client.get(format!("{base}/dashboard/campaign/{campaign}")).header("cookie", &cookie)).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.body.contains("&lt;b&gt;Spring&lt;/b&gt;") && !p.body.contains("<b>Spring"), "escaped on its page");
    assert!(p.body.contains("id=\"model-table\"") && p.csp.as_deref().unwrap().contains("script-src 'self'"));
    let p =
        send(form("/dashboard/links", &[("csrf", &csrf), ("campaign_id", &campaign), ("web", "javascript:alert(1)")]))
            .await;
    assert_eq!(p.status, 303);
    let page = send(client.get(format!("{base}/dashboard")).header("cookie", &cookie)).await;
    assert!(page.body.contains("Link not created"), "a bad destination is refused with its reason");
    let p = send(form(
        "/dashboard/links",
        &[
            ("csrf", &csrf),
            ("campaign_id", &campaign),
            ("web", "https://shop.example.com/spring"),
            ("utm_source", "meta"),
        ],
    ))
    .await;
    assert_eq!(p.status, 303);
    let page = send(client.get(format!("{base}/dashboard")).header("cookie", &cookie)).await;
    assert!(page.body.contains("https://shop.example.com/spring"));
    assert!(page.body.contains("Audit log (1)") && page.body.contains("dashboard:admin-key"), "the audit entry");

    // The live stream: a counters event with the events accepted so far.
    let mut resp = client.get(format!("{base}/dashboard/live")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let chunk = String::from_utf8(resp.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(chunk.starts_with("event: counters\ndata: {"), "{chunk}");
    let data: serde_json::Value =
        serde_json::from_str(chunk.lines().nth(1).unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert!(data["events"].as_u64().unwrap() >= 1, "{data}");

    // Sign out: the session is gone.
    let p = send(form("/dashboard/logout", &[("csrf", &csrf)])).await;
    assert_eq!(p.location.as_deref(), Some("/dashboard/login"));
    let p = send(client.get(format!("{base}/dashboard")).header("cookie", &cookie)).await;
    assert_eq!(p.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opened_with_a_jwt_ends_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.reports.scheduler = false;
    config.jwt = Some(trailmark_server::JwtConfig {
        algorithm: trailmark_server::JwtAlgorithm::Hs256,
        key: "jwt-key".into(),
        issuer: None,
        audience: None,
    });
    let base = common::serve(ServerBuilder::new(config).sqlite(dir.path().join("d.db")).unwrap()).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let token = |exp: i64| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": "ops@example", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(b"jwt-key"),
        )
        .unwrap()
    };
    let now = trailmark_server::now_ms() / 1000;
    let sign_in = |jwt: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let login = send(client.get(format!("{base}/dashboard/login"))).await;
            let cookie = cookie_value(&login, "tm_login").unwrap();
            let csrf = field(&login.body, "csrf");
            let p = send(
                client
                    .post(format!("{base}/dashboard/login"))
                    .header("cookie", format!("tm_login={cookie}"))
                    .header("origin", base.clone())
                    .form(&[("key", jwt.as_str()), ("csrf", csrf.as_str())]),
            )
            .await;
            assert_eq!(p.status, 303, "{}", p.body);
            cookie_value(&p, "tm_dash").unwrap()
        }
    };
    // A token valid for 10 more minutes: a session that works, with a cookie as long.
    let session = sign_in(token(now + 600)).await;
    let page = send(client.get(format!("{base}/dashboard")).header("cookie", format!("tm_dash={session}"))).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("jwt:ops@example"));
    // A token past its expiry (still inside the validator's leeway): the session ends at once.
    let session = sign_in(token(now - 10)).await;
    let page = send(client.get(format!("{base}/dashboard")).header("cookie", format!("tm_dash={session}"))).await;
    assert_eq!((page.status, page.location.as_deref()), (303, Some("/dashboard/login")));
}
