//! The two answers the parsers give that the error carries: the cause of an authentication
//! failure and the source of a retry delay. Below both `parse` and `error` (it imports
//! nothing of the crate); users find them as `oai_resilience::AuthCause` and
//! `oai_resilience::error::DelaySource`, re-exported there.

/// The specific cause of an authentication (401) or permission (403) failure, read from the
/// message, or of a malformed key found locally.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthCause {
    /// The key is wrong or revoked ("Incorrect API key provided").
    IncorrectKey,
    /// No key reached the server ("You didn't provide an API key").
    MissingKey,
    /// The key's account must be a member of an organization.
    NotOrgMember,
    /// The request came from an IP address the key does not allow.
    IpNotAllowed,
    /// The country, region or territory is not supported.
    UnsupportedRegion,
    /// The key lacks a scope the endpoint needs.
    MissingScope,
    /// The key is empty.
    Empty,
    /// Whitespace or a line break inside or around the key (a copy-paste fault).
    Whitespace,
    /// The key is wrapped in quotes.
    Quoted,
    /// The key has characters outside printable ASCII.
    NonAscii,
    /// The key starts with a second `Bearer `.
    DoubledBearer,
    /// The key is a placeholder from documentation (`sk-...`, `your-api-key`, …).
    Placeholder,
    /// The key does not start with a prefix that the target accepts (`sk-` for OpenAI).
    WrongPrefix,
    /// The key has characters that the configured shape does not allow.
    InvalidCharacters,
    /// The key is shorter than the configured shape allows (often a truncated copy).
    TooShort,
    /// An `Authorization` header holds a bare key without the `Bearer ` scheme.
    MissingBearerScheme,
    /// The user-supplied key provider failed (its error is the [`Error`](crate::Error)'s source).
    KeyProvider,
    /// Some other authentication failure.
    Other,
}

impl AuthCause {
    /// What is wrong, in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            AuthCause::IncorrectKey => "the API key is incorrect or revoked",
            AuthCause::MissingKey => "no API key reached the server",
            AuthCause::NotOrgMember => "the account must be a member of an organization",
            AuthCause::IpNotAllowed => "the request's IP address is not allowed for this key",
            AuthCause::UnsupportedRegion => "the country, region or territory is not supported",
            AuthCause::MissingScope => "the API key lacks a required scope",
            AuthCause::Empty => "the API key is empty",
            AuthCause::Whitespace => "the API key contains whitespace or a line break",
            AuthCause::Quoted => "the API key is wrapped in quotes",
            AuthCause::NonAscii => "the API key contains non-ASCII characters",
            AuthCause::DoubledBearer => "the API key starts with a second `Bearer `",
            AuthCause::Placeholder => "the API key is a documentation placeholder",
            AuthCause::WrongPrefix => "the API key does not have an accepted prefix",
            AuthCause::InvalidCharacters => "the API key contains characters keys never have",
            AuthCause::TooShort => "the API key is too short",
            AuthCause::MissingBearerScheme => "the Authorization header lacks the `Bearer ` scheme",
            AuthCause::KeyProvider => "the key provider failed",
            AuthCause::Other => "authentication failed",
        }
    }

    /// What to do about it (the error's hint).
    pub(crate) fn hint(self) -> &'static str {
        match self {
            AuthCause::IncorrectKey => "check that OPENAI_API_KEY holds a valid, current key (keys are at https://platform.openai.com/api-keys)",
            AuthCause::MissingKey => "set OPENAI_API_KEY to a key from https://platform.openai.com/api-keys, or configure a key source on the auth layer",
            AuthCause::NotOrgMember => "ask to be added to an organization, or set OPENAI_ORG_ID to one you belong to",
            AuthCause::IpNotAllowed => "add this IP address to the key's project allow-list, or call from an allowed network",
            AuthCause::UnsupportedRegion => "the API is not available from this region; see OpenAI's supported countries",
            AuthCause::MissingScope => "give the key the needed permission (a restricted key lacks this scope) or use another key",
            AuthCause::Empty | AuthCause::Placeholder => "use a real key from https://platform.openai.com/api-keys where this one comes from (an argument, a key source, OPENAI_API_KEY)",
            AuthCause::Whitespace => "remove the whitespace or line break around the key (a common copy-paste fault)",
            AuthCause::Quoted => "remove the quotes around the key",
            AuthCause::NonAscii => "re-copy the key: it contains characters that keys never have",
            AuthCause::DoubledBearer => "pass the bare key; the `Bearer ` prefix is added for you",
            AuthCause::WrongPrefix => "OpenAI keys start with `sk-`; check that the key belongs to this service",
            AuthCause::InvalidCharacters => "re-copy the key: it contains characters that keys never have",
            AuthCause::TooShort => "the key looks truncated: copy it again in full",
            AuthCause::MissingBearerScheme => "send `Authorization: Bearer <key>`, or let the auth layer add the header",
            AuthCause::KeyProvider => "see the key provider's error (the source); nothing was sent",
            AuthCause::Other => "check the API key and its permissions",
        }
    }
}

/// Where a retry delay came from.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DelaySource {
    /// The policy's own backoff.
    Backoff,
    /// The `retry-after-ms` header.
    RetryAfterMs,
    /// The `retry-after` header.
    RetryAfter,
    /// An `x-ratelimit-reset-*` header.
    RateLimitReset,
    /// "Please try again in …" inside the error message.
    Message,
}

impl DelaySource {
    /// Whether the delay is the server's hint (not the client's backoff).
    pub fn is_server_hint(self) -> bool {
        !matches!(self, DelaySource::Backoff)
    }
}
