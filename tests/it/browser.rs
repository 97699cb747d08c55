//! The browser harness itself (tests/browser/lib.js through scripts/browser): Debian's
//! Chromium, driven by playwright-core, loads a page from a real hub.

use crate::kit::{Server, browser};

#[tokio::test]
async fn chromium_loads_a_page_of_the_hub() {
    let server = Server::start(&[]).await;
    let result = browser::run("smoke.js", server.base(), &[]).await;
    assert_eq!(result["status"], 200, "{result}");
    assert!(
        result["body"].as_str().unwrap_or_default().contains("ok"),
        "{result}"
    );
}
