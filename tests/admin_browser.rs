//! The review page in a real browser (headless Chromium through chromedriver): log in, see the
//! held messages, open one, release it; a wrong token, a form without its CSRF token and
//! another site's form are refused; HTML in a subject shows as text. Screenshots of the list
//! (desktop and phone widths) and of a message go under `target/tmp/admin-browser/`.

mod admin_support;

use admin_support::browser::{driver, screenshot, wait_text};
use admin_support::{FakeQueue, TOKEN, TestPage, leak, qid};
use bccguard::hold::ReleaseAs;
use fantoccini::{Client, Locator};

const HOSTILE: &str = "<script>alert(\"owned\")</script> Spring sale: 20% off";

/// A queue as an operator might find it at 3 a.m.: a big leak, a smaller one, an old one.
fn night_queue() -> (FakeQueue, Vec<String>) {
    let queue = FakeQueue::default();
    let mut messages = vec![
        leak(HOSTILE, 1_250, (3 * 60 + 12) * 60_000),
        leak("Your order confirmation (batch 7 of 12)", 23, 47 * 60_000),
        leak("", 7, (9 * 24 + 20) * 3_600_000),
    ];
    messages[1].summary.sender = "orders@erp.example.com".into();
    messages[1].summary.rule = None;
    messages[2].summary.sender = String::new();
    let ids = messages.iter().map(|m| m.summary.id.to_string()).collect();
    for m in messages {
        queue.hold(m);
    }
    (queue, ids)
}

async fn log_in(browser: &Client, base: &str, token: &str) {
    browser.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap().path(), "/login", "no session: the login form");
    browser.find(Locator::Css("input[name=token]")).await.unwrap().send_keys(token).await.unwrap();
    browser.find(Locator::Css("form.login button")).await.unwrap().click().await.unwrap();
}

#[tokio::test]
async fn a_person_logs_in_sees_the_held_mail_and_releases_one() {
    let Some(driver) = driver() else { return };
    let (queue, ids) = night_queue();
    let page = TestPage::start(queue).await;
    let base = format!("http://{}", page.addr);
    let browser = driver.browser(1280, 800).await;

    log_in(&browser, &base, "not-the-token-at-all").await;
    wait_text(&browser, ".notice.error", "That token is not right.").await;
    screenshot(&browser, "login-refused.png").await;
    assert!(browser.get_all_cookies().await.unwrap().is_empty(), "no cookie for a wrong token");

    log_in(&browser, &base, TOKEN).await;
    wait_text(&browser, "h1", "Held messages").await;
    let table = wait_text(&browser, "table", &ids[0]).await;
    for cell in [ids[0].as_str(), HOSTILE, "1,250", "3h 12m", "n***@shop.example.com", "marketing", "9d 20h"] {
        assert!(table.contains(cell), "{cell:?} in {table}");
    }
    assert!(browser.find_all(Locator::Css("script")).await.unwrap().is_empty(), "the subject's <script> is text");
    screenshot(&browser, "list.png").await;

    browser.find(Locator::LinkText(&ids[0])).await.unwrap().click().await.unwrap();
    wait_text(&browser, "h1", &format!("Held message {}", ids[0])).await;
    wait_text(&browser, "pre.header", &format!("Subject: {HOSTILE}")).await;
    let full = browser.find(Locator::Css("body")).await.unwrap().text().await.unwrap();
    assert!(full.contains("news@shop.example.com"), "the message page shows addresses");
    screenshot(&browser, "message.png").await;

    let release = Locator::XPath("//button[normalize-space()='Release as explode']");
    browser.find(release).await.unwrap().click().await.unwrap();
    let notice = wait_text(&browser, ".notice.done", "Released").await;
    assert_eq!(notice, format!("Released {} as explode: its copies are on their way.", ids[0]));
    assert_eq!(browser.current_url().await.unwrap().path(), "/");
    assert_eq!(page.queue.released(), [(qid(&ids[0]), ReleaseAs::Explode)]);
    assert!(!wait_text(&browser, "table", &ids[1]).await.contains(&ids[0]), "no longer held");

    browser.find(Locator::Css("header form button")).await.unwrap().click().await.unwrap();
    wait_text(&browser, "h1", "Log in").await;
    browser.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap().path(), "/login", "logged out");
    browser.close().await.unwrap();
}

#[tokio::test]
async fn forged_posts_are_refused_in_the_browser() {
    let Some(driver) = driver() else { return };
    let (queue, ids) = night_queue();
    let page = TestPage::start(queue).await;
    let base = format!("http://{}", page.addr);
    let browser = driver.browser(1280, 800).await;
    log_in(&browser, &base, TOKEN).await;
    wait_text(&browser, "table", &ids[0]).await;

    // Our own page, its CSRF fields removed (as a forged form would lack them).
    browser.goto(&format!("{base}/message/{}", ids[1])).await.unwrap();
    let strip = "document.querySelectorAll('input[name=csrf]').forEach(e => e.remove()); return 0;";
    browser.execute(strip, vec![]).await.unwrap();
    browser.find(Locator::Css("button.primary")).await.unwrap().click().await.unwrap();
    wait_text(&browser, "h1", "Refused").await;

    // Another site's page posting to us: the SameSite=Strict cookie stays home.
    let forged = format!(
        "data:text/html,<form method=post action='{base}/message/{}/release'>\
         <input name=as value=pass><button id=go>win a prize</button></form>",
        ids[1]
    );
    browser.goto(&forged).await.unwrap();
    browser.find(Locator::Id("go")).await.unwrap().click().await.unwrap();
    wait_text(&browser, "body", "Your session has ended").await;
    assert!(page.queue.released().is_empty(), "nothing released by a forged form");
    browser.close().await.unwrap();
}

#[tokio::test]
async fn the_list_reads_on_a_phone() {
    let Some(driver) = driver() else { return };
    let (queue, ids) = night_queue();
    let page = TestPage::start(queue).await;
    let browser = driver.browser(390, 844).await;
    log_in(&browser, &format!("http://{}", page.addr), TOKEN).await;
    wait_text(&browser, "table", &ids[0]).await;
    screenshot(&browser, "list-phone.png").await;
    let width = browser.execute("return document.documentElement.scrollWidth;", vec![]).await.unwrap();
    assert!(width.as_u64().unwrap() <= 390, "the page itself does not scroll sideways: {width}");
    browser.find(Locator::LinkText(&ids[0])).await.unwrap().click().await.unwrap();
    wait_text(&browser, "h1", &ids[0]).await;
    screenshot(&browser, "message-phone.png").await;
    browser.close().await.unwrap();
}
