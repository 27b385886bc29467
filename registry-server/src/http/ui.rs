//! The web dashboard at `/ui`: three static files compiled into the binary, which read
//! the JSON API from the browser (see `ui/app.js`). The routes are open: the page itself
//! holds no data, and the API calls it makes carry the user's token.
//!
//! **Invariant:** the page loads nothing but these files and talks to nothing but this
//! server: the `Content-Security-Policy` allows only `'self'`, and no inline script or
//! style (the tests below check the files for inline code and outside URLs).

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::app::App;

/// Everything comes from this server; no inline script or style, no plugins, no framing,
/// no form posts. Data URLs only for images (the page's empty favicon, so the browser
/// does not ask for `/favicon.ico`).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One file of the dashboard.
#[derive(Debug, Clone, Copy)]
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const INDEX_HTML: Asset = Asset {
    body: include_str!("ui/index.html"),
    content_type: "text/html; charset=utf-8",
};

const APP_JS: Asset = Asset {
    body: include_str!("ui/app.js"),
    content_type: "text/javascript; charset=utf-8",
};

const STYLE_CSS: Asset = Asset {
    body: include_str!("ui/style.css"),
    content_type: "text/css; charset=utf-8",
};

/// `GET /ui` (and `/ui/`), `/ui/app.js`, `/ui/style.css`. Open routes: they are not in
/// the API's route table, so not in the OpenAPI document either.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/ui", get(|| async { INDEX_HTML.into_response() }))
        .route("/ui/", get(|| async { INDEX_HTML.into_response() }))
        .route("/ui/app.js", get(|| async { APP_JS.into_response() }))
        .route("/ui/style.css", get(|| async { STYLE_CSS.into_response() }))
}

impl IntoResponse for Asset {
    /// The file with its content type, the policy, and `no-cache` so that a browser
    /// revalidates and picks up a new server's files at once.
    fn into_response(self) -> Response {
        let headers: [(HeaderName, HeaderValue); 5] = [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ];
        (headers, self.body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [(&str, Asset); 3] = [
        ("index.html", INDEX_HTML),
        ("app.js", APP_JS),
        ("style.css", STYLE_CSS),
    ];

    #[test]
    fn every_file_is_served_with_its_type_the_policy_and_no_cache() {
        for (name, asset) in ALL {
            let response = asset.into_response();
            let header = |h: HeaderName| response.headers()[h].to_str().unwrap().to_owned();
            assert_eq!(header(header::CONTENT_TYPE), asset.content_type, "{name}");
            assert_eq!(header(header::CACHE_CONTROL), "no-cache", "{name}");
            let policy = header(header::CONTENT_SECURITY_POLICY);
            assert!(
                policy.starts_with("default-src 'self';"),
                "{name}: {policy}"
            );
            assert!(!policy.contains("unsafe"), "{name}: {policy}");
        }
    }

    #[test]
    fn the_files_name_no_outside_url() {
        for (name, asset) in ALL {
            for needle in ["://", "url(", "@import"] {
                assert!(!asset.body.contains(needle), "{name} contains {needle:?}");
            }
        }
        // Every link of the page is one of this server's files (or the empty favicon).
        for attribute in [" src=\"", " href=\""] {
            for link in INDEX_HTML.body.split(attribute).skip(1) {
                let target = link.split('"').next().unwrap();
                assert!(
                    target.starts_with("/ui/") || target == "data:,",
                    "index.html links to {target:?}"
                );
            }
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = INDEX_HTML.body;
        for script in html.split("<script").skip(1) {
            let (tag, rest) = script.split_once('>').unwrap();
            assert!(
                tag.contains("src=\"/ui/"),
                "inline or outside script: {tag}"
            );
            assert!(rest.starts_with("</script>"), "script with a body: {tag}");
        }
        for inline in ["<style", " style=", " onclick=", " onload=", " onsubmit="] {
            assert!(!html.contains(inline), "index.html contains {inline:?}");
        }
        for file in ["/ui/app.js", "/ui/style.css"] {
            assert!(html.contains(file), "index.html does not load {file}");
        }
    }

    #[test]
    fn the_script_puts_no_data_in_html() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!APP_JS.body.contains(sink), "app.js uses {sink}");
        }
    }
}
