//! The test browser itself: Chromium starts, runs a page's JavaScript, answers DevTools calls
//! and takes a screenshot.

use std::time::Duration;

use sluice_e2e::browser::Browser;

#[test]
fn chromium_runs_a_pages_script_and_takes_a_screenshot() {
    let mut browser = Browser::start(800, 600).expect("chromium");
    browser
        .open("data:text/html,<p id=x>waiting</p><script>setTimeout(()=>{x.textContent='ran '+(40+2)},300)</script>")
        .expect("open");
    browser
        .wait_for(
            "document.getElementById('x').textContent == 'ran 42'",
            Duration::from_secs(20),
        )
        .expect("the script ran");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-smoke.png");
    browser.screenshot(&shot).expect("screenshot");
    let png = std::fs::read(&shot).expect("png");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}
