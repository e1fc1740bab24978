//! The pages portcullis shows browsers (sign-in, sign-out confirmation, signed-out, forbidden,
//! error), rendered with minijinja from `templates/`: embedded in the binary, each replaceable
//! by a file of the same name in `server.templates_dir`. Every value is HTML-escaped.

use std::path::Path;

use axum::body::Body;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use minijinja::Environment;
use serde::Serialize;

/// The templates and their embedded defaults.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("sign_in.html", include_str!("../templates/sign_in.html")),
    ("signed_out.html", include_str!("../templates/signed_out.html")),
    ("sign_out.html", include_str!("../templates/sign_out.html")),
    ("forbidden.html", include_str!("../templates/forbidden.html")),
    ("error.html", include_str!("../templates/error.html")),
];

/// The page renderer.
#[derive(Debug)]
pub struct Pages {
    env: Environment<'static>,
}

impl Pages {
    /// The embedded templates, each replaced by `dir/<name>` when that file exists. A template
    /// that does not parse is an error naming it.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        for (name, embedded) in TEMPLATES {
            let source = match dir.map(|d| d.join(name)) {
                Some(p) if p.exists() => std::fs::read_to_string(&p).map_err(|e| {
                    anyhow::anyhow!("server.templates_dir: cannot read {}: {e}", p.display())
                })?,
                _ => embedded.to_string(),
            };
            env.add_template_owned(*name, source)
                .map_err(|e| anyhow::anyhow!("template {name}: {e}"))?;
        }
        Ok(Self { env })
    }

    /// `name` rendered with `ctx` as an HTML response with `status`; a template that fails to
    /// render gives a plain page (and a log line), never a panic.
    pub fn render(&self, name: &str, status: StatusCode, ctx: impl Serialize) -> Response<Body> {
        let html = self.env.get_template(name).and_then(|t| t.render(ctx)).unwrap_or_else(|e| {
            tracing::error!(template = name, error = %e, "page template failed to render");
            format!(
                "<!doctype html><title>{}</title><p>{}</p>",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
        });
        let mut resp = Response::new(Body::from(html));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert("x-frame-options", HeaderValue::from_static("DENY"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::json;

    async fn text(resp: Response<Body>) -> String {
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn pages_escape_everything_and_show_the_request_id() {
        let p = Pages::load(None).unwrap();
        let resp = p.render(
            "forbidden.html",
            StatusCode::FORBIDDEN,
            json!({"app_name": "app", "user": "<script>alert(1)</script>", "request_id": "abc-1",
                   "sign_out_url": "/oauth2/sign_out?x=\"><b>"}),
        );
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
        let html = text(resp).await;
        assert!(html.contains("abc-1"));
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("\"><b>"), "{html}");
        assert!(!html.contains("http://") && !html.contains("https://"), "external asset: {html}");
    }

    #[tokio::test]
    async fn a_templates_dir_replaces_single_pages() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("error.html"), "custom {{ status }}").unwrap();
        let p = Pages::load(Some(dir.path())).unwrap();
        let html =
            text(p.render("error.html", StatusCode::BAD_GATEWAY, json!({"status": 502}))).await;
        assert_eq!(html, "custom 502");
        let html = text(p.render("sign_in.html", StatusCode::OK, json!({"app_name": "x"}))).await;
        assert!(html.contains("Sign in"));
        std::fs::write(dir.path().join("error.html"), "{% if %}").unwrap();
        assert!(Pages::load(Some(dir.path())).unwrap_err().to_string().contains("error.html"));
    }
}
