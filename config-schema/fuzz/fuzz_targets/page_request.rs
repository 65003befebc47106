//! Fuzz target: what `ftctl page` reads from whoever reaches its listening
//! address (a method and a URL, as tiny_http hands them over) must never
//! panic the routing (`page::metrics_target`, `page::answer`), a metrics
//! request may only name one of the page's own hosts, and every answer is
//! one of the statuses the page documents.
#![no_main]

use config_schema::remote::page::{self, History};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (method, url) = text.split_once(' ').unwrap_or(("GET", &text));
    let hosts = vec!["192.0.2.1".to_string(), "host-b.example:7401".to_string()];
    match page::metrics_target(method, url, &hosts) {
        Some(Ok(host)) => assert!(hosts.iter().any(|h| h == host), "{host} is not a page host"),
        Some(Err(a)) => assert!(matches!(a.status, 400 | 404 | 405), "{}", a.status),
        None => {
            let a = page::answer(method, url, &History::default(), 0);
            assert!(matches!(a.status, 200 | 404 | 405), "{}", a.status);
        }
    }
});
