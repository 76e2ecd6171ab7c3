//! The route allowlist: which methods and paths are forwarded.

use http::Method;

use crate::config::ConfigError;

/// The OpenAI API's route prefixes forwarded by default. A prefix matches itself and what is
/// under it (`/v1/files` matches `/v1/files` and `/v1/files/file-abc/content`, not
/// `/v1/filesystem`).
pub const DEFAULT_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/conversations",
    "/v1/models",
    "/v1/moderations",
    "/v1/images",
    "/v1/audio",
    "/v1/files",
    "/v1/uploads",
    "/v1/batches",
    "/v1/fine_tuning",
    "/v1/vector_stores",
    "/v1/assistants",
    "/v1/threads",
    "/v1/evals",
    "/v1/containers",
];

/// The organization and admin routes, forwarded only with `--allow-admin-routes`.
pub const ADMIN_ROUTES: &[&str] = &["/v1/organization"];

/// The methods the OpenAI API uses; every other method is refused with 405.
pub const METHODS: &[Method] = &[Method::GET, Method::POST, Method::DELETE];

/// Why a request is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The method is not one the API uses (405).
    Method,
    /// The path is not an allowed route, or is not in a normal form (404).
    Route,
}

/// The allowed route prefixes.
#[derive(Debug, Clone)]
pub struct Routes {
    prefixes: Vec<String>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            prefixes: DEFAULT_ROUTES.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

impl Routes {
    /// The default routes (if `defaults`), the admin routes (if `admin`) and `extra`.
    ///
    /// # Errors
    ///
    /// An extra prefix that does not start with `/`, or is not in the normal form that
    /// [`Routes::check`] requires.
    pub fn new(defaults: bool, admin: bool, extra: &[String]) -> Result<Self, ConfigError> {
        let mut prefixes: Vec<String> = Vec::new();
        if defaults {
            prefixes.extend(DEFAULT_ROUTES.iter().map(|s| (*s).to_owned()));
        }
        if admin {
            prefixes.extend(ADMIN_ROUTES.iter().map(|s| (*s).to_owned()));
        }
        for p in extra {
            let p = p.trim().trim_end_matches('/');
            if !p.starts_with('/') || !normal(p) || p.len() < 2 {
                return Err(ConfigError(format!(
                    "--allow-route {p:?}: expected a path prefix such as /v1/rerank"
                )));
            }
            prefixes.push(p.to_owned());
        }
        if prefixes.is_empty() {
            return Err(ConfigError(
                "--no-default-routes without --allow-route or --allow-admin-routes: no route \
                 would be forwarded"
                    .to_owned(),
            ));
        }
        Ok(Routes { prefixes })
    }

    /// The allowed prefixes.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// The allowed prefix that `path` falls under (the longest), if any: the `route` label of
    /// the metrics.
    pub fn matched(&self, path: &str) -> Option<&str> {
        self.prefixes
            .iter()
            .filter(|p| under(path, p))
            .max_by_key(|p| p.len())
            .map(String::as_str)
    }

    /// Whether `method path` is forwarded.
    ///
    /// # Errors
    ///
    /// [`Refusal::Method`] for a method the API does not use (`CONNECT`, `TRACE`, `OPTIONS`,
    /// `PUT`, …); [`Refusal::Route`] for a path outside the allowlist, or one that is not in
    /// normal form (`.`/`..` segments, `//`, encoded `/`, `.` or `\`), which an upstream
    /// might resolve to a route outside the allowlist.
    pub fn check(&self, method: &Method, path: &str) -> Result<(), Refusal> {
        self.resolve(method, path).1
    }

    /// [`Routes::matched`] and [`Routes::check`] together, with one scan of the prefixes: the
    /// prefix `path` falls under (also when the request is refused), and whether
    /// `method path` is forwarded.
    pub(crate) fn resolve(
        &self,
        method: &Method,
        path: &str,
    ) -> (Option<&str>, Result<(), Refusal>) {
        let matched = self.matched(path);
        let verdict = if !METHODS.contains(method) {
            Err(Refusal::Method)
        } else if !path.starts_with('/') || !normal(path) || matched.is_none() {
            Err(Refusal::Route)
        } else {
            Ok(())
        };
        (matched, verdict)
    }
}

/// Whether `path` is `prefix` or a path below it (`/v1/files/x`, not `/v1/filesystem`).
pub(crate) fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A path without `.`/`..` segments, empty inner segments, backslashes or percent-encoded
/// `/`, `\` or `.`.
fn normal(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%2e")
        || path.contains('\\')
    {
        return false;
    }
    let inner = path.trim_start_matches('/');
    if path.starts_with("//") {
        return false;
    }
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    inner
        .split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let r = Routes::default();
        assert_eq!(r.check(&Method::POST, "/v1/chat/completions"), Ok(()));
        assert_eq!(r.check(&Method::GET, "/v1/files"), Ok(()));
        assert_eq!(r.check(&Method::DELETE, "/v1/files/file-1"), Ok(()));
        assert_eq!(r.check(&Method::GET, "/v1/filesystem"), Err(Refusal::Route));
        assert_eq!(
            r.check(&Method::GET, "/v1/organization/admin_api_keys"),
            Err(Refusal::Route)
        );
        assert_eq!(
            r.check(&Method::GET, "/v1/models/../organization/admin_api_keys"),
            Err(Refusal::Route)
        );
        assert_eq!(
            r.check(&Method::GET, "/v1/models/%2E%2E/x"),
            Err(Refusal::Route)
        );
        assert_eq!(r.check(&Method::GET, "//v1/models"), Err(Refusal::Route));
        assert_eq!(r.check(&Method::TRACE, "/v1/models"), Err(Refusal::Method));
        assert_eq!(
            r.check(&Method::CONNECT, "/v1/models"),
            Err(Refusal::Method)
        );
        assert_eq!(r.check(&Method::OPTIONS, "*"), Err(Refusal::Method));
        let admin = Routes::new(true, true, &[]).unwrap();
        assert_eq!(
            admin.check(&Method::GET, "/v1/organization/admin_api_keys"),
            Ok(())
        );
        let only = Routes::new(false, false, &["/v1/rerank/".into()]).unwrap();
        assert_eq!(only.check(&Method::POST, "/v1/rerank"), Ok(()));
        assert_eq!(
            only.check(&Method::POST, "/v1/chat/completions"),
            Err(Refusal::Route)
        );
        // The prefix is named also for a refused request (the metrics' route label).
        assert_eq!(
            r.resolve(&Method::PUT, "/v1/files/x"),
            (Some("/v1/files"), Err(Refusal::Method))
        );
        assert_eq!(
            r.resolve(&Method::GET, "/v1/models/../x"),
            (Some("/v1/models"), Err(Refusal::Route))
        );
        assert_eq!(
            r.resolve(&Method::GET, "/v2/x"),
            (None, Err(Refusal::Route))
        );
        assert!(Routes::new(false, false, &[]).is_err());
        assert!(Routes::new(true, false, &["v1/x".into()]).is_err());
    }
}
