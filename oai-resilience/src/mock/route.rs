//! The endpoints the mock serves.

use std::fmt;

/// The endpoints the mock serves.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses`.
    Responses,
}

impl Route {
    /// Every route.
    pub const ALL: [Route; 3] = [Route::ChatCompletions, Route::Embeddings, Route::Responses];

    /// The path, with the `/v1` prefix.
    pub fn path(self) -> &'static str {
        match self {
            Route::ChatCompletions => "/v1/chat/completions",
            Route::Embeddings => "/v1/embeddings",
            Route::Responses => "/v1/responses",
        }
    }

    /// The route a request path names (with or without `/v1`, ignoring a trailing `/`).
    pub fn from_path(path: &str) -> Option<Route> {
        let p = path.strip_prefix("/v1").unwrap_or(path);
        let p = p.strip_suffix('/').unwrap_or(p);
        match p {
            "/chat/completions" => Some(Route::ChatCompletions),
            "/embeddings" => Some(Route::Embeddings),
            "/responses" => Some(Route::Responses),
            _ => None,
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}
