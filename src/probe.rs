//! `portcullis probe URL`: a health check for images without curl (the image's `HEALTHCHECK`,
//! Compose's `healthcheck`): a `GET` that must answer 2xx within a timeout.

use std::time::Duration;

/// `GET url` within `timeout`: the status when it is 2xx, else why the probe failed. Redirects
/// are not followed and no proxy from the environment is used.
pub async fn probe(url: &str, timeout: Duration) -> Result<u16, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("not an http(s) URL: {url}"));
    }
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| format!("cannot make a client: {e}"))?;
    let resp = client.get(parsed).send().await.map_err(|e| {
        if e.is_timeout() {
            format!("no answer from {url} within {timeout:?}")
        } else {
            format!("{url}: {}", crate::error::error_chain(&e))
        }
    })?;
    let status = resp.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(format!("{url} answered {status}"))
    }
}
