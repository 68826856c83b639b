//! The review page on the real relay: a leaking message held by `policy.action = "hold"`, seen
//! on the page and released there, reaches the upstream exploded, one copy per customer;
//! over raw HTTP, and in a real browser (see `tests/admin_browser.rs` for when it skips).

mod admin_support;
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use admin_support::browser::{driver, screenshot, wait_text};
use admin_support::{BEARER_HEADER, TOKEN, eventually, eventually_some, login, post, request};
use bccguard::config::Config;
use common::{TestRelay, split_delivered, test_config};
use fantoccini::Locator;

const CUSTOMERS: [&str; 3] = ["ann@customer-a.example", "bob@customer-b.example", "cy@customer-c.example"];
const SUBJECT: &str = "<b>Spring</b> sale <script>alert(1)</script>";

/// A configuration that holds every leak, with the review page on `127.0.0.1:0` and its
/// token in `dir`; and the token file.
fn holding_config(dir: &Path) -> (Config, PathBuf) {
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let toml = format!(
        "[policy]\ninternal_domains = [\"example.com\"]\naction = \"hold\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
        token_file.display()
    );
    (test_config(&toml, dir), token_file)
}

/// A relay that holds every leak, with the review page on `127.0.0.1:0`.
async fn holding_relay() -> TestRelay {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = holding_config(dir.path());
    TestRelay::start_with(config, dir).await
}

/// Send the leak and wait until the page lists it: its queue id.
async fn hold_a_leak(relay: &TestRelay) -> String {
    let message = format!(
        "From: Shop <shop@example.com>\r\nTo: {}\r\nSubject: {SUBJECT}\r\n\r\nTwenty percent off.\r\n",
        CUSTOMERS.join(", ")
    );
    let reply = relay.send("shop@example.com", &CUSTOMERS, message.as_bytes()).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let page = relay.admin.expect("the review page");
    let listed = eventually_some("the held message on the page", || async move {
        let list = request(page, "GET", "/", &[BEARER_HEADER], "").await;
        let start = list.body.find("href=\"/message/")? + "href=\"/message/".len();
        Some(list.body[start..start + 16].to_string())
    });
    let id = listed.await;
    assert!(relay.outbox_files().is_empty(), "nothing delivered while held");
    id
}

/// The outbox holds one exploded copy per customer, each addressed to that customer alone.
async fn assert_exploded(relay: &TestRelay) {
    let files = relay.wait_outbox(CUSTOMERS.len()).await;
    let mut delivered_to: Vec<String> = Vec::new();
    for (_, bytes) in &files {
        let (envelope, _received, message) = split_delivered(bytes);
        let rcpt = envelope.split("Delivered-To: ").nth(1).expect("a Delivered-To line").trim_end().to_string();
        let text = String::from_utf8_lossy(&message);
        assert!(text.contains("X-Bccguard: exploded\r\n"), "{text}");
        assert!(text.contains(&format!("To: {rcpt}\r\n")), "{rcpt} alone in To: {text}");
        for other in CUSTOMERS.iter().filter(|c| **c != rcpt) {
            assert!(!text.contains(other), "{rcpt}'s copy shows {other}");
        }
        delivered_to.push(rcpt);
    }
    delivered_to.sort();
    assert_eq!(delivered_to, CUSTOMERS);
}

#[tokio::test]
async fn a_held_leak_released_on_the_page_reaches_the_upstream_exploded() {
    let relay = holding_relay().await;
    let id = hold_a_leak(&relay).await;
    let page: SocketAddr = relay.admin.unwrap();
    let (cookie, csrf) = login(page).await;
    let shown = request(page, "GET", &format!("/message/{id}"), &[("Cookie", &cookie)], "").await;
    assert_eq!(shown.status, 200);
    assert!(shown.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !shown.body.contains("<script"));
    let path = format!("/message/{id}/release");
    let forged = post(page, &path, &[("Cookie", &cookie)], "as=explode").await;
    assert_eq!(forged.status, 403, "no CSRF token");
    let released = post(page, &path, &[("Cookie", &cookie)], &format!("as=explode&csrf={csrf}")).await;
    assert_eq!(released.header("location"), Some(format!("/?done=released&as=explode&id={id}").as_str()));
    assert_exploded(&relay).await;
    let again = post(page, &path, &[("Cookie", &cookie)], &format!("as=explode&csrf={csrf}")).await;
    assert_eq!(again.status, 303);
    let again = again.header("location").unwrap();
    assert!(again.starts_with("/?done=not-") && again.ends_with(&id), "not released twice: {again}");
    relay.wait_spool_empty().await;
    assert_eq!(relay.outbox_files().len(), CUSTOMERS.len(), "delivered once");
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn in_a_browser_a_held_leak_is_released_and_the_upstream_gets_the_exploded_copies() {
    let Some(driver) = driver() else { return };
    let relay = holding_relay().await;
    let id = hold_a_leak(&relay).await;
    let base = format!("http://{}", relay.admin.unwrap());
    let browser = driver.browser(1280, 800).await;
    browser.goto(&format!("{base}/")).await.unwrap();
    browser.find(Locator::Css("input[name=token]")).await.unwrap().send_keys(TOKEN).await.unwrap();
    browser.find(Locator::Css("form.login button")).await.unwrap().click().await.unwrap();
    let table = wait_text(&browser, "table", &id).await;
    assert!(table.contains(SUBJECT), "the subject's HTML as text: {table}");
    assert!(browser.find_all(Locator::Css("script, b")).await.unwrap().is_empty());
    screenshot(&browser, "relay-list.png").await;
    browser.find(Locator::LinkText(&id)).await.unwrap().click().await.unwrap();
    wait_text(&browser, "pre.header", CUSTOMERS[2]).await;
    let release = Locator::XPath("//button[normalize-space()='Release as explode']");
    browser.find(release).await.unwrap().click().await.unwrap();
    wait_text(&browser, ".notice.done", &format!("Released {id} as explode")).await;
    assert_exploded(&relay).await;
    browser.close().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_reload_reads_the_token_again_and_a_new_token_ends_every_session() {
    let dir = tempfile::tempdir().unwrap();
    let (config, token_file) = holding_config(dir.path());
    let listener = bccguard::listen("127.0.0.1:0".parse().unwrap(), bccguard::MIN_BACKLOG).unwrap();
    let mut running = bccguard::start(config.clone(), vec![listener]).await.expect("the relay starts");
    let page = running.admin_addr().expect("the review page");
    let (cookie, _) = login(page).await;
    running.reload(config.clone());
    assert_eq!(request(page, "GET", "/", &[("Cookie", &cookie)], "").await.status, 200, "same token, same session");

    std::fs::write(&token_file, "a-brand-new-token-0123456789\n").unwrap();
    running.reload(config.clone());
    let old_session = request(page, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!(old_session.header("location"), Some("/login"));
    assert_eq!(request(page, "GET", "/", &[BEARER_HEADER], "").await.status, 401, "the old token");
    let new = [("Authorization", "Bearer a-brand-new-token-0123456789")];
    assert_eq!(request(page, "GET", "/", &new, "").await.status, 200);

    running.stop().await;
    eventually("the page to close", || std::net::TcpStream::connect(page).is_err()).await;
}

#[tokio::test]
async fn a_tripped_breaker_is_listed_on_the_page_with_its_key_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let toml = format!(
        "[policy]\ninternal_domains = [\"example.com\"]\n[policy.breaker]\nleaks = 2\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
        token_file.display()
    );
    let relay = TestRelay::start_with(test_config(&toml, dir.path()), dir).await;
    let page = relay.admin.expect("the review page");
    let before = request(page, "GET", "/", &[BEARER_HEADER], "").await;
    assert!(before.body.contains("No breaker is tripped."), "{}", before.body);
    let message = format!("From: news@example.com\r\nTo: {}\r\nSubject: Offer\r\n\r\nHi\r\n", CUSTOMERS.join(", "));
    for _ in 0..2 {
        let reply = relay.send("news@example.com", &CUSTOMERS, message.as_bytes()).await;
        assert!(reply.starts_with("250 "), "{reply}");
    }
    let list = eventually_some("the tripped breaker on the page", || async move {
        let list = request(page, "GET", "/", &[BEARER_HEADER], "").await;
        list.body.contains("n***@example.com").then_some(list.body)
    })
    .await;
    assert!(!list.contains("news@example.com"), "{list}");
    assert!(list.contains("bccguard breaker reset KEY") && list.contains(">hold<"), "{list}");
}
