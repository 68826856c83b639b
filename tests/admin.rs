//! The review page over real sockets, on an in-memory held queue: who gets in, what a POST
//! needs, what is done, and what every answer carries.

mod admin_support;

use std::time::{Duration, Instant};

use admin_support::{FakeQueue, TOKEN, TestPage, leak, login, post, qid, request};
use bccguard::admin::{self, Token};
use bccguard::config::AdminConfig;
use bccguard::hold::ReleaseAs;

const BEARER: &str = "Bearer test-token-0123456789abcdef";

async fn page_with(subjects: &[&str]) -> (TestPage, Vec<String>) {
    let queue = FakeQueue::default();
    let mut ids = Vec::new();
    for (i, subject) in subjects.iter().enumerate() {
        let message = leak(subject, 3, (i as i64 + 1) * 600_000);
        ids.push(message.summary.id.to_string());
        queue.hold(message);
    }
    (TestPage::start(queue).await, ids)
}

#[tokio::test]
async fn without_a_session_pages_redirect_to_login_and_posts_do_nothing() {
    let (page, ids) = page_with(&["Spring sale"]).await;
    for path in ["/", &format!("/message/{}", ids[0]), "/nowhere"] {
        let reply = request(page.addr, "GET", path, &[], "").await;
        assert_eq!((reply.status, reply.header("location")), (303, Some("/login")), "{path}");
    }
    let reply =
        request(page.addr, "GET", "/", &[("Cookie", &format!("bccguard_session={}", "a".repeat(64)))], "").await;
    assert_eq!((reply.status, reply.header("location")), (303, Some("/login")), "an unknown session");
    let reply = post(page.addr, &format!("/message/{}/release", ids[0]), &[], "as=explode").await;
    assert_eq!(reply.status, 401);
    assert!(reply.body.contains("Your session has ended: log in again. Nothing was done."), "{}", reply.body);
    let login = request(page.addr, "GET", "/login", &[], "").await;
    assert_eq!(login.status, 200);
    assert!(login.body.contains("name=\"token\""));
    assert!(page.queue.released().is_empty());
}

#[tokio::test]
async fn a_wrong_token_is_refused_late_and_opens_no_session() {
    let (page, _) = page_with(&["Spring sale"]).await;
    let started = Instant::now();
    let reply = post(page.addr, "/login", &[], "token=test-token-0123456789abcdeX").await;
    assert!(started.elapsed() >= Duration::from_secs(1), "answered after {:?}", started.elapsed());
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("set-cookie"), None);
    assert!(reply.body.contains("That token is not right.") && reply.body.contains("name=\"token\""));
    assert!(page.auth.sessions().is_empty());
    let reply = post(page.addr, "/login", &[], "").await;
    assert_eq!(reply.status, 401, "no token at all");
    let reply = request(page.addr, "GET", "/", &[("Authorization", "Bearer wrong-wrong-wrong-wrong")], "").await;
    assert_eq!((reply.status, reply.header("www-authenticate")), (401, Some("Bearer")));
    assert!(!reply.body.contains("Spring sale"));
}

#[tokio::test]
async fn wrong_tokens_are_answered_one_at_a_time() {
    let (page, _) = page_with(&[]).await;
    let started = Instant::now();
    let tries = (0..3).map(|_| post(page.addr, "/login", &[], "token=nope-nope-nope-nope"));
    for reply in futures_join(tries).await {
        assert_eq!(reply.status, 401);
    }
    assert!(started.elapsed() >= Duration::from_secs(3), "3 guesses in {:?}", started.elapsed());
}

/// Run `futures` at once, each in its own task, and collect their outputs in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_bearer_token_reads_and_acts_without_csrf() {
    let (page, ids) = page_with(&["Spring sale", "Autumn sale"]).await;
    let list = request(page.addr, "GET", "/", &[("Authorization", BEARER)], "").await;
    assert_eq!(list.status, 200);
    assert!(list.body.contains(&ids[0]) && list.body.contains("Autumn sale"), "{}", list.body);
    assert_eq!(list.csrf(), None, "a script gets no session and no CSRF token");
    let reply = post(page.addr, &format!("/message/{}/release", ids[0]), &[("Authorization", BEARER)], "as=pass").await;
    assert_eq!(reply.status, 303, "{reply:?}");
    let location = format!("/?done=released&as=pass&id={}", ids[0]);
    assert_eq!(reply.header("location"), Some(location.as_str()));
    assert_eq!(reply.body, format!("done=released&as=pass&id={}\n", ids[0]));
    let reply = post(page.addr, &format!("/message/{}/delete", ids[1]), &[("Authorization", BEARER)], "").await;
    assert_eq!(reply.header("location"), Some(format!("/?done=deleted&id={}", ids[1]).as_str()));
    assert_eq!(page.queue.released(), [(qid(&ids[0]), ReleaseAs::Pass)]);
    assert_eq!(page.queue.deleted(), [qid(&ids[1])]);
    assert!(page.auth.sessions().is_empty());
}

#[tokio::test]
async fn a_session_post_without_its_csrf_token_is_refused() {
    let (page, ids) = page_with(&["Spring sale"]).await;
    let (cookie, csrf) = login(page.addr).await;
    let (_, other_csrf) = login(page.addr).await;
    let path = format!("/message/{}/release", ids[0]);
    let with_cookie = [("Cookie", cookie.as_str())];
    for form in [
        "as=explode".to_string(),
        "as=explode&csrf=".to_string(),
        format!("as=explode&csrf={other_csrf}"),
        format!("as=explode&csrf={}", cookie.trim_start_matches("bccguard_session=")),
    ] {
        let reply = post(page.addr, &path, &with_cookie, &form).await;
        assert_eq!(reply.status, 403, "{form}");
        assert!(reply.body.contains("nothing was done"), "{}", reply.body);
    }
    let cross_site = [("Cookie", cookie.as_str()), ("Sec-Fetch-Site", "cross-site")];
    let reply = post(page.addr, &path, &cross_site, &format!("as=explode&csrf={csrf}")).await;
    assert_eq!(reply.status, 403, "another site's page");
    let reply = post(page.addr, "/logout", &with_cookie, "").await;
    assert_eq!(reply.status, 403, "logout needs the token too");
    assert!(page.queue.released().is_empty());
}

#[tokio::test]
async fn a_session_post_with_its_csrf_token_acts_and_the_list_says_so() {
    let (page, ids) = page_with(&["Spring sale", "Autumn sale"]).await;
    let (cookie, csrf) = login(page.addr).await;
    let with_cookie = [("Cookie", cookie.as_str())];
    let path = format!("/message/{}/release", ids[0]);
    let reply = post(page.addr, &path, &with_cookie, &format!("csrf={csrf}&as=explode")).await;
    assert_eq!(reply.status, 303, "{reply:?}");
    let location = reply.header("location").unwrap().to_string();
    assert_eq!(location, format!("/?done=released&as=explode&id={}", ids[0]));
    assert_eq!(page.queue.released(), [(qid(&ids[0]), ReleaseAs::Explode)]);
    let list = request(page.addr, "GET", &location, &with_cookie, "").await;
    let notice = format!("<p class=\"notice done\" role=\"status\">Released {} as explode", ids[0]);
    assert!(list.body.contains(&notice), "{}", list.body);
    assert!(!list.body.contains(&format!("href=\"/message/{}\"", ids[0])), "no longer listed");
    let again = post(page.addr, &path, &with_cookie, &format!("csrf={csrf}&as=explode")).await;
    assert_eq!(again.header("location"), Some(format!("/?done=not-held&id={}", ids[0]).as_str()));
    assert_eq!(page.queue.released().len(), 1, "released once");
    let bad = post(page.addr, &path, &with_cookie, &format!("csrf={csrf}&as=everyone")).await;
    assert_eq!(bad.status, 400);
    let delete = format!("/message/{}/delete", ids[1]);
    let reply = post(page.addr, &delete, &with_cookie, &format!("csrf={csrf}")).await;
    assert_eq!(reply.header("location"), Some(format!("/?done=deleted&id={}", ids[1]).as_str()));
    assert_eq!(page.queue.deleted(), [qid(&ids[1])]);
}

#[tokio::test]
async fn html_in_a_subject_and_the_header_block_shows_as_text() {
    let subject = "<script>alert(\"owned\")</script><img src=x onerror=alert(1)>";
    let (page, ids) = page_with(&[subject]).await;
    let auth = [("Authorization", BEARER)];
    let list = request(page.addr, "GET", "/", &auth, "").await;
    let message = request(page.addr, "GET", &format!("/message/{}", ids[0]), &auth, "").await;
    for reply in [&list, &message] {
        assert_eq!(reply.status, 200);
        assert!(!reply.body.contains("<script") && !reply.body.contains("<img"), "{}", reply.body);
        assert!(reply.body.contains("&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;&lt;img src=x"));
    }
    assert!(message.body.contains("\r\nSubject: &lt;script&gt;alert(&quot;owned&quot;)"), "in the header block");
}

#[tokio::test]
async fn addresses_show_only_on_the_message_page() {
    let (page, ids) = page_with(&["Your order, customer1@mail1.example"]).await;
    let auth = [("Authorization", BEARER)];
    let list = request(page.addr, "GET", "/", &auth, "").await;
    assert!(!list.body.contains("news@shop.example.com") && !list.body.contains("customer1@"), "{}", list.body);
    assert!(list.body.contains("n***@shop.example.com") && list.body.contains("c***@mail1.example"));
    let message = request(page.addr, "GET", &format!("/message/{}", ids[0]), &auth, "").await;
    assert!(
        message.body.contains("news@shop.example.com") && message.body.contains("<li>customer3@mail3.example</li>")
    );
    let gone = request(page.addr, "GET", "/message/0000000000000001", &auth, "").await;
    assert_eq!(gone.status, 404);
    assert!(gone.body.contains("0000000000000001 is not held"));
    let bad = request(page.addr, "GET", "/message/..%2Fspool", &auth, "").await;
    assert_eq!(bad.status, 404);
}

#[tokio::test]
async fn the_session_cookie_has_exact_attributes_and_logout_ends_it() {
    let (page, _) = page_with(&[]).await;
    let reply = post(page.addr, "/login", &[], &format!("token={TOKEN}")).await;
    assert_eq!((reply.status, reply.header("location")), (303, Some("/")));
    let set = reply.header("set-cookie").unwrap();
    let id = set.strip_prefix("bccguard_session=").unwrap().split(';').next().unwrap();
    assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{set}");
    assert!(!set.contains(TOKEN));
    assert_eq!(set, format!("bccguard_session={id}; HttpOnly; SameSite=Strict; Path=/"));
    let https = post(page.addr, "/login", &[("X-Forwarded-Proto", "https")], &format!("token={TOKEN}")).await;
    assert!(https.header("set-cookie").unwrap().ends_with("; HttpOnly; SameSite=Strict; Path=/; Secure"));
    let cookie = format!("bccguard_session={id}");
    let csrf = request(page.addr, "GET", "/", &[("Cookie", &cookie)], "").await.csrf().unwrap();
    let out = post(page.addr, "/logout", &[("Cookie", &cookie)], &format!("csrf={csrf}")).await;
    assert_eq!((out.status, out.header("location")), (303, Some("/login")));
    assert_eq!(out.header("set-cookie"), Some("bccguard_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"));
    let after = request(page.addr, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!(after.header("location"), Some("/login"), "the session ended on the server too");
}

#[tokio::test]
async fn a_new_token_ends_every_session() {
    let (page, _) = page_with(&[]).await;
    let (cookie, _) = login(page.addr).await;
    page.auth.set_token(Token::checked("another-token-0123456789", "test").unwrap());
    let reply = request(page.addr, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!(reply.header("location"), Some("/login"));
    let reply = request(page.addr, "GET", "/", &[("Authorization", "Bearer another-token-0123456789")], "").await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let (page, _) = page_with(&["Spring sale"]).await;
    let (cookie, _) = login(page.addr).await;
    let with_cookie = [("Cookie", cookie.as_str())];
    for (path, status) in [("/login", 303), ("/", 200), ("/style.css", 200), ("/nowhere", 404)] {
        let reply = request(page.addr, "GET", path, &with_cookie, "").await;
        assert_eq!(reply.status, status, "{path}");
        assert_eq!(
            reply.header("content-security-policy"),
            Some(
                "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                 frame-ancestors 'none'; base-uri 'none'"
            ),
            "{path}"
        );
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        assert_eq!(reply.header("x-frame-options"), Some("DENY"));
    }
    let css = request(page.addr, "GET", "/style.css", &[], "").await;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
}

#[tokio::test]
async fn request_bodies_are_bounded_and_must_be_forms() {
    let (page, ids) = page_with(&["Spring sale"]).await;
    let path = format!("/message/{}/release", ids[0]);
    let big = format!("as=explode&pad={}", "x".repeat(9 * 1024));
    let reply = post(page.addr, &path, &[("Authorization", BEARER)], &big).await;
    assert_eq!(reply.status, 413);
    let reply = post(page.addr, "/login", &[], &format!("token={TOKEN}&pad={}", "x".repeat(9 * 1024))).await;
    assert_eq!(reply.status, 413);
    let json = [("Authorization", BEARER), ("Content-Type", "application/json")];
    let reply = request(page.addr, "POST", &path, &json, "{\"as\":\"explode\"}").await;
    assert_eq!(reply.status, 415);
    assert!(page.queue.released().is_empty());
}

#[tokio::test]
async fn the_page_starts_from_its_config_section() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut config = AdminConfig::default();
    assert!(admin::start(&config, FakeQueue::default(), stop.clone()).unwrap().is_none(), "off unless listen is set");
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.token_file = Some(dir.path().join("missing"));
    let error = admin::start(&config, FakeQueue::default(), stop.clone()).unwrap_err().to_string();
    assert!(error.starts_with("admin.token_file: cannot read ") && error.contains("missing"), "{error}");
    config.token_file = Some(token_file);
    let started = admin::start(&config, FakeQueue::default(), stop.clone()).unwrap().unwrap();
    assert_ne!(started.addr.port(), 0);
    let (cookie, _) = login(started.addr).await;
    assert_eq!(request(started.addr, "GET", "/", &[("Cookie", &cookie)], "").await.status, 200);
    stop.cancel();
    admin_support::eventually("the page to stop accepting", || std::net::TcpStream::connect(started.addr).is_err())
        .await;
}
