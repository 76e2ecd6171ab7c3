//! The gateway's configuration: flags, each with an environment variable and a key of the
//! optional TOML file (`--config FILE`), checked before anything starts. A flag wins over its
//! variable, a variable over the file, the file over the default. A bad value is a
//! [`ConfigError`] with a message that names the flag, variable or file key (the binary prints
//! it and exits with status 2); secrets (keys) never appear in a message.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use oai_resilience::auth::{ApiKey, Credentials};
use oai_resilience::RetryConfig;

use crate::gateway::access::AccessKeys;
use crate::gateway::routes::Routes;

/// The text of `oai-gateway --help`.
pub const HELP: &str = "\
oai-gateway: an OpenAI-compatible proxy with retries, pacing and typed errors

USAGE:
    oai-gateway [OPTIONS]

Each option can also be set by the environment variable named after it, or in a TOML file
(--config) under its name without the dashes (`max-body-bytes = 1048576`). A flag wins over
its variable, a variable over the file, the file over the default. Durations are seconds
(`30`) or take a unit (`500ms`, `30s`, `2m`).

    --config FILE                   OAI_GATEWAY_CONFIG
        A TOML file of settings; relative paths in it are relative to the file. Unknown keys
        and malformed values are errors (exit status 2).

UPSTREAM:
    --upstream URL                  OAI_GATEWAY_UPSTREAM      default https://api.openai.com/v1
        The OpenAI-compatible API to forward to, with or without /v1 (http:// or https://).
    --upstream-ca FILE              OAI_GATEWAY_UPSTREAM_CA
        A PEM file of CA certificates trusted for the upstream, besides the webpki roots.
    --upstream-auth-header NAME     OAI_GATEWAY_UPSTREAM_AUTH_HEADER   default authorization
        `authorization` (Authorization: Bearer KEY) or another header that carries the bare
        key, such as `api-key` for Azure OpenAI.
    --fallback-upstream \"URL [key-env=NAME] [auth-header=NAME] [model=MODEL]\"   (repeatable)
                                    OAI_GATEWAY_FALLBACK_UPSTREAMS (comma-separated)
        An upstream tried, in the order given, after --upstream when a call cannot be served
        there soon (circuit open, quota exhausted, rate limit or 5xx after the retries; never
        a 400). key-env: the variable holding its key (default OPENAI_API_KEY; another one
        needs access keys); auth-header: as --upstream-auth-header; model: the model it is
        sent instead of the body's. Responses name the route in x-oai-gateway-route.

ACCESS (who may use which key; see the README's security model):
    --access-key NAME=KEY           (repeatable)
        An access key that clients send as `Authorization: Bearer KEY`; NAME appears in logs.
        With access keys, requests that present one are sent with the server's key
        (OPENAI_API_KEY) and all others get 401 locally. Prefer --access-keys-file: command
        lines are visible to other users of the machine.
    --access-keys-file FILE         OAI_GATEWAY_ACCESS_KEYS_FILE
        One `NAME KEY` per line; blank lines and lines starting with # are ignored.
    OPENAI_API_KEY, OPENAI_ORG_ID, OPENAI_PROJECT_ID (environment only)
        The server's key, used only for requests that presented a valid access key. Without
        access keys it is never used: each request must carry its caller's own key.

ROUTES:
    --allow-route PREFIX            OAI_GATEWAY_ALLOW_ROUTES (comma-separated)   (repeatable)
        Forward this path prefix too (e.g. /v1/rerank), besides the OpenAI API's routes.
    --no-default-routes             OAI_GATEWAY_NO_DEFAULT_ROUTES=1
        Forward only the --allow-route prefixes.
    --allow-admin-routes            OAI_GATEWAY_ALLOW_ADMIN_ROUTES=1
        Also forward /v1/organization/... (admin keys, users, projects, usage, costs).

LIMITS AND OPERATIONS:
    --listen ADDR                   OAI_GATEWAY_LISTEN        default 127.0.0.1:8787
    --max-body-bytes N              OAI_GATEWAY_MAX_BODY_BYTES        default 8388608 (8 MiB)
        The largest JSON body (read whole, validated, replayed on retries).
    --max-buffered-bytes N          OAI_GATEWAY_MAX_BUFFERED_BYTES    default 8 x --max-body-bytes
        The bytes of JSON bodies buffered at once across all connections; a body that would
        pass it gets 503 with Retry-After at once (nothing is sent upstream).
    --max-upload-bytes N            OAI_GATEWAY_MAX_UPLOAD_BYTES      default 536870912 (512 MiB)
        The largest streamed body (multipart and other non-JSON uploads: audio, files,
        uploads, image edits), which is sent on as it arrives and never retried.
    --header-read-timeout DURATION  OAI_GATEWAY_HEADER_READ_TIMEOUT   default 10s
    --body-read-timeout DURATION    OAI_GATEWAY_BODY_READ_TIMEOUT     default 60s
        A JSON body must arrive whole within it; a streamed body's chunks each within it.
    --min-upload-rate N             OAI_GATEWAY_MIN_UPLOAD_RATE       default 16384 (bytes/s)
        Once --body-read-timeout has passed since its head, a streamed upload must have
        arrived at this many bytes per second on average, else 408; 0: no minimum.
    --stream-first-byte-timeout DURATION  OAI_GATEWAY_STREAM_FIRST_BYTE_TIMEOUT  default 120s
        From the upstream's response head to its first body byte; past it the attempt fails
        and may be retried (nothing reached the client). 0 disables it.
    --stream-idle-timeout DURATION  OAI_GATEWAY_STREAM_IDLE_TIMEOUT   default 60s
        Between two chunks of the upstream's body; past it an event stream ends with an SSE
        `error` event (another body is cut). 0 disables it.
    --max-connections N             OAI_GATEWAY_MAX_CONNECTIONS       default 1024
    --drain-timeout DURATION        OAI_GATEWAY_DRAIN_TIMEOUT         default 30s
        On SIGTERM or SIGINT: stop accepting, let requests in flight finish for up to this
        long, then exit 0.
    --max-pacing-wait DURATION      OAI_GATEWAY_MAX_PACING_WAIT       default 60s
        The longest a request waits locally for a pacing slot (the learned rate limit); one
        that cannot be admitted by then gets 429 (`paced locally`, nothing sent).
    --store memory|redis://HOST:PORT  OAI_GATEWAY_STORE         default memory
        Where the pacing state lives; with Redis, replicas that use one key share its limit.
    --metrics-listen ADDR           OAI_GATEWAY_METRICS_LISTEN
        Serve GET /metrics on this address only (default: on the main listener).
    --log-format text|json          OAI_GATEWAY_LOG_FORMAT    default text
        json: one JSON object per log line (the access log's fields as keys).
    -h, --help                      This text.

ENDPOINTS: GET /healthz (the process is up), GET /readyz (not draining, the upstream host
resolves, Redis answers when --store is Redis), GET /metrics (Prometheus text); every other
path is forwarded if allowed.
Exit status: 0 after a drain, 2 for a configuration error, 1 if the address cannot be bound.
";

/// How the gateway sends the key upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAuth {
    /// `Authorization: Bearer KEY`, as OpenAI expects.
    Bearer,
    /// The bare key in a named header (`api-key` for Azure OpenAI).
    Header(HeaderName),
}

/// One fallback upstream: `--fallback-upstream "URL [key-env=NAME] [auth-header=NAME]
/// [model=MODEL]"`.
///
/// ```
/// use oai_gateway::config::{FallbackUpstream, UpstreamAuth};
///
/// let env = |name: &str| (name == "AZURE_KEY").then(|| "0123456789abcdef".to_owned());
/// let fb = FallbackUpstream::parse(
///     "https://example.openai.azure.com/openai/v1 key-env=AZURE_KEY auth-header=api-key model=gpt-4o-mini",
///     &env,
/// )
/// .unwrap();
/// assert_eq!(fb.upstream, "https://example.openai.azure.com/openai/v1");
/// assert_eq!(fb.auth, UpstreamAuth::Header(http::HeaderName::from_static("api-key")));
/// assert_eq!(fb.model.as_deref(), Some("gpt-4o-mini"));
/// assert!(fb.key.is_some());
/// assert!(FallbackUpstream::parse("https://x.example/v1 colour=blue", &env).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct FallbackUpstream {
    /// The base URL, as for `--upstream`.
    pub upstream: String,
    /// The header that carries its key.
    pub auth: UpstreamAuth,
    /// The environment variable its key is read from (`OPENAI_API_KEY` by default).
    pub key_env: String,
    /// Its key (the variable's value when the configuration was read); used only for
    /// requests that presented an access key, like the server's key.
    pub key: Option<Credentials>,
    /// The model sent to it instead of the body's `model`.
    pub model: Option<String>,
}

/// The default `key-env` of a fallback upstream: the server's key.
pub const DEFAULT_KEY_ENV: &str = "OPENAI_API_KEY";

impl FallbackUpstream {
    /// Parses `URL [key-env=NAME] [auth-header=NAME] [model=MODEL]`, reading the key from the
    /// variable `key-env` names through `env` (for `OPENAI_API_KEY`, with `OPENAI_ORG_ID` and
    /// `OPENAI_PROJECT_ID`, as the server's key).
    ///
    /// # Errors
    ///
    /// An empty spec, an option other than the three, an option given twice, an invalid
    /// header name. The message never holds a key.
    pub fn parse(spec: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut words = spec.split_whitespace();
        let upstream = words
            .next()
            .ok_or_else(|| {
                "expected \"URL [key-env=NAME] [auth-header=NAME] [model=MODEL]\"".to_owned()
            })?
            .to_owned();
        let mut fb = FallbackUpstream {
            upstream,
            auth: UpstreamAuth::Bearer,
            key_env: DEFAULT_KEY_ENV.to_owned(),
            key: None,
            model: None,
        };
        let mut seen: Vec<&str> = Vec::new();
        for word in words {
            let (k, v) = word
                .split_once('=')
                .filter(|(_, v)| !v.is_empty())
                .ok_or_else(|| {
                    format!("{word:?}: expected key-env=NAME, auth-header=NAME or model=MODEL")
                })?;
            if seen.contains(&k) {
                return Err(format!("{k} is given twice"));
            }
            match k {
                "key-env" => fb.key_env = v.to_owned(),
                "auth-header" => fb.auth = parse_auth_header(v)?,
                "model" => fb.model = Some(v.to_owned()),
                _ => {
                    return Err(format!(
                        "unknown option {k:?} (expected key-env, auth-header or model)"
                    ))
                }
            }
            seen.push(k);
        }
        fb.key = credentials(&fb.key_env, env);
        Ok(fb)
    }
}

/// The key in the variable `var` (for `OPENAI_API_KEY`, with `OPENAI_ORG_ID` and
/// `OPENAI_PROJECT_ID`), if set and not blank.
fn credentials(var: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<Credentials> {
    let key = env(var).filter(|k| !k.trim().is_empty())?;
    let mut creds = Credentials::new(ApiKey::new(key.trim().to_owned()));
    if var == DEFAULT_KEY_ENV {
        if let Some(org) = env("OPENAI_ORG_ID").filter(|v| !v.trim().is_empty()) {
            creds = creds.with_organization(org.trim().to_owned());
        }
        if let Some(project) = env("OPENAI_PROJECT_ID").filter(|v| !v.trim().is_empty()) {
            creds = creds.with_project(project.trim().to_owned());
        }
    }
    Some(creds)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `tracing`'s human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration error: the message names the flag or variable at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Everything the gateway needs. Built by [`Config::from_args`]; tests also build it from
/// [`Config::default`] and field assignment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The upstream base URL, as the SDKs write it.
    pub upstream: String,
    /// A PEM file of extra CA certificates for the upstream.
    pub upstream_ca: Option<PathBuf>,
    /// The header that carries the key upstream.
    pub upstream_auth: UpstreamAuth,
    /// The fallback upstreams, tried in order after [`upstream`](Self::upstream).
    pub fallbacks: Vec<FallbackUpstream>,
    /// The access keys (hashed); empty: callers bring their own OpenAI key.
    pub access_keys: AccessKeys,
    /// The server's key (`OPENAI_API_KEY`, with `OPENAI_ORG_ID`/`OPENAI_PROJECT_ID`), used
    /// only for requests that presented a valid access key.
    pub server_key: Option<Credentials>,
    /// The routes forwarded.
    pub routes: Routes,
    /// The largest JSON request body accepted (read whole).
    pub max_body_bytes: usize,
    /// The bytes of JSON bodies buffered at once across all connections (`None`: 8 ×
    /// [`max_body_bytes`](Self::max_body_bytes)); see [`Config::buffered_bytes_cap`].
    pub max_buffered_bytes: Option<usize>,
    /// The largest streamed request body accepted (uploads).
    pub max_upload_bytes: u64,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a JSON body, or each chunk of a streamed one.
    pub body_read_timeout: Duration,
    /// The average bytes per second a streamed upload must keep once `body_read_timeout` has
    /// passed since its head (0: no minimum).
    pub min_upload_rate: u64,
    /// The bound from the upstream's response head to its first body byte (`None`: none).
    pub stream_first_byte_timeout: Option<Duration>,
    /// The bound between two chunks of the upstream's body (`None`: none).
    pub stream_idle_timeout: Option<Duration>,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long a drain waits for requests in flight.
    pub drain_timeout: Duration,
    /// The longest a request waits locally for a pacing slot
    /// ([`PacerConfig::max_wait`](oai_resilience::pace::PacerConfig)).
    pub max_pacing_wait: Duration,
    /// `memory` or a Redis URL.
    pub store: String,
    /// Where `GET /metrics` is served instead of the main listener.
    pub metrics_listen: Option<SocketAddr>,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// The retry policy (not a flag: the library's defaults; tests seed it). If it has a
    /// retry budget, the gateway replaces it with a [`TokenBudget::default`] of its own, whose
    /// balance `/metrics` shows.
    ///
    /// [`TokenBudget::default`]: oai_resilience::retry::TokenBudget
    pub retry: RetryConfig,
}

/// The default of `--stream-first-byte-timeout`: 120 s. Longer than the library's 60 s: a
/// reasoning model may think for a while before its first event.
pub const DEFAULT_STREAM_FIRST_BYTE: Duration = Duration::from_secs(120);
/// The default of `--max-pacing-wait`: 60 s, the library's [`PacerConfig::max_wait`].
///
/// [`PacerConfig::max_wait`]: oai_resilience::pace::PacerConfig
pub const DEFAULT_MAX_PACING_WAIT: Duration = Duration::from_secs(60);
/// The default of `--stream-idle-timeout`: 60 s.
pub const DEFAULT_STREAM_IDLE: Duration = Duration::from_secs(60);

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            upstream: "https://api.openai.com/v1".to_owned(),
            upstream_ca: None,
            upstream_auth: UpstreamAuth::Bearer,
            fallbacks: Vec::new(),
            access_keys: AccessKeys::default(),
            server_key: None,
            routes: Routes::default(),
            max_body_bytes: 8 * 1024 * 1024,
            max_buffered_bytes: None,
            max_upload_bytes: 512 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            min_upload_rate: 16 * 1024,
            stream_first_byte_timeout: Some(DEFAULT_STREAM_FIRST_BYTE),
            stream_idle_timeout: Some(DEFAULT_STREAM_IDLE),
            max_connections: 1024,
            drain_timeout: Duration::from_secs(30),
            max_pacing_wait: DEFAULT_MAX_PACING_WAIT,
            store: "memory".to_owned(),
            metrics_listen: None,
            log_format: LogFormat::Text,
            retry: RetryConfig::new(),
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// `--help`.
    Help,
    /// Run with this configuration.
    Run(Box<Config>),
}

const FLAGS_WITH_VALUE: &[(&str, &str)] = &[
    ("--listen", "OAI_GATEWAY_LISTEN"),
    ("--upstream", "OAI_GATEWAY_UPSTREAM"),
    ("--upstream-ca", "OAI_GATEWAY_UPSTREAM_CA"),
    ("--upstream-auth-header", "OAI_GATEWAY_UPSTREAM_AUTH_HEADER"),
    ("--access-keys-file", "OAI_GATEWAY_ACCESS_KEYS_FILE"),
    ("--max-body-bytes", "OAI_GATEWAY_MAX_BODY_BYTES"),
    ("--max-buffered-bytes", "OAI_GATEWAY_MAX_BUFFERED_BYTES"),
    ("--max-upload-bytes", "OAI_GATEWAY_MAX_UPLOAD_BYTES"),
    ("--min-upload-rate", "OAI_GATEWAY_MIN_UPLOAD_RATE"),
    ("--header-read-timeout", "OAI_GATEWAY_HEADER_READ_TIMEOUT"),
    ("--body-read-timeout", "OAI_GATEWAY_BODY_READ_TIMEOUT"),
    (
        "--stream-first-byte-timeout",
        "OAI_GATEWAY_STREAM_FIRST_BYTE_TIMEOUT",
    ),
    ("--stream-idle-timeout", "OAI_GATEWAY_STREAM_IDLE_TIMEOUT"),
    ("--max-connections", "OAI_GATEWAY_MAX_CONNECTIONS"),
    ("--drain-timeout", "OAI_GATEWAY_DRAIN_TIMEOUT"),
    ("--max-pacing-wait", "OAI_GATEWAY_MAX_PACING_WAIT"),
    ("--store", "OAI_GATEWAY_STORE"),
    ("--metrics-listen", "OAI_GATEWAY_METRICS_LISTEN"),
    ("--log-format", "OAI_GATEWAY_LOG_FORMAT"),
];
const SWITCHES: &[(&str, &str)] = &[
    ("--allow-admin-routes", "OAI_GATEWAY_ALLOW_ADMIN_ROUTES"),
    ("--no-default-routes", "OAI_GATEWAY_NO_DEFAULT_ROUTES"),
];

impl Config {
    /// Parses the command line `args` (without the program name), the environment `env` (a
    /// lookup, so tests can pass a fake one) and the TOML file of `--config` (or
    /// `OAI_GATEWAY_CONFIG`), if any. Files named by the settings are read here.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the flag or variable at fault.
    pub fn from_args<I, S>(
        args: I,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Command, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        // name -> value; repeatable flags collected apart.
        let mut values: Vec<(&'static str, String)> = Vec::new();
        let mut switches: Vec<&'static str> = Vec::new();
        let mut access_flags: Vec<String> = Vec::new();
        let mut routes_flags: Vec<String> = Vec::new();
        let mut fallback_flags: Vec<String> = Vec::new();
        let mut config_flag: Option<String> = None;
        let mut it = args.into_iter().map(Into::into);
        while let Some(arg) = it.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(Command::Help);
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| err(format!("{name} needs a value")))
            };
            if let Some((flag, _)) = FLAGS_WITH_VALUE.iter().find(|(f, _)| *f == name) {
                values.push((flag, value()?));
            } else if let Some((flag, _)) = SWITCHES.iter().find(|(f, _)| *f == name) {
                if inline.is_some() {
                    return Err(err(format!("{flag} takes no value")));
                }
                switches.push(flag);
            } else if name == "--config" {
                config_flag = Some(value()?);
            } else if name == "--access-key" {
                access_flags.push(value()?);
            } else if name == "--allow-route" {
                routes_flags.push(value()?);
            } else if name == "--fallback-upstream" {
                fallback_flags.push(value()?);
            } else {
                return Err(err(format!("unknown option {name:?}")));
            }
        }
        let file = match config_flag
            .map(|p| ("--config".to_owned(), p))
            .or_else(|| env("OAI_GATEWAY_CONFIG").map(|p| ("OAI_GATEWAY_CONFIG".to_owned(), p)))
        {
            Some((from, path)) => Some(FileSettings::read(&from, Path::new(&path))?),
            None => None,
        };
        let get = |flag: &str| -> Option<(String, String)> {
            if let Some((_, v)) = values.iter().rev().find(|(f, _)| *f == flag) {
                return Some((flag.to_owned(), v.clone()));
            }
            let var = FLAGS_WITH_VALUE.iter().find(|(f, _)| *f == flag)?.1;
            if let Some(v) = env(var) {
                return Some((var.to_owned(), v));
            }
            let f = file.as_ref()?;
            f.values
                .get(&flag[2..])
                .map(|v| (format!("{} key {}", f.shown, &flag[2..]), v.clone()))
        };
        let switch = |flag: &str| -> Result<bool, ConfigError> {
            if switches.contains(&flag) {
                return Ok(true);
            }
            let var = SWITCHES.iter().find(|(f, _)| *f == flag).map(|(_, v)| *v);
            match var.and_then(env).as_deref().map(str::trim) {
                None => Ok(file
                    .as_ref()
                    .and_then(|f| f.switches.get(&flag[2..]).copied())
                    .unwrap_or(false)),
                Some("" | "0" | "false" | "no") => Ok(false),
                Some("1" | "true" | "yes") => Ok(true),
                Some(other) => Err(err(format!(
                    "{}: expected 1/true/yes or 0/false/no, not {other:?}",
                    var.unwrap_or(flag)
                ))),
            }
        };

        let mut c = Config::default();
        if let Some((from, v)) = get("--listen") {
            c.listen = v.trim().parse().map_err(|e| {
                err(format!(
                    "{from} {v:?}: {e} (expected an address such as 127.0.0.1:8787)"
                ))
            })?;
        }
        if let Some((_, v)) = get("--upstream") {
            c.upstream = v.trim().to_owned();
        }
        if let Some((_, v)) = get("--upstream-ca") {
            c.upstream_ca = Some(PathBuf::from(v));
        }
        if let Some((from, v)) = get("--upstream-auth-header") {
            c.upstream_auth = parse_auth_header(&v).map_err(|e| err(format!("{from}: {e}")))?;
        }
        if let Some((from, v)) = get("--max-body-bytes") {
            c.max_body_bytes = parse_count(&v).map_err(|e| err(format!("{from}: {e}")))?;
        }
        if let Some((from, v)) = get("--max-buffered-bytes") {
            c.max_buffered_bytes = Some(parse_count(&v).map_err(|e| err(format!("{from}: {e}")))?);
        }
        if let Some((from, v)) = get("--max-upload-bytes") {
            c.max_upload_bytes = parse_count(&v).map_err(|e| err(format!("{from}: {e}")))? as u64;
        }
        if let Some((from, v)) = get("--min-upload-rate") {
            c.min_upload_rate = match v.trim() {
                "0" => 0,
                v => parse_count(v).map_err(|e| err(format!("{from}: {e}")))? as u64,
            };
        }
        if let Some((from, v)) = get("--max-connections") {
            c.max_connections = parse_count(&v).map_err(|e| err(format!("{from}: {e}")))?;
        }
        for (flag, slot) in [
            (
                "--stream-first-byte-timeout",
                &mut c.stream_first_byte_timeout,
            ),
            ("--stream-idle-timeout", &mut c.stream_idle_timeout),
        ] {
            if let Some((from, v)) = get(flag) {
                let d = parse_duration(&v).map_err(|e| err(format!("{from}: {e}")))?;
                *slot = (!d.is_zero()).then_some(d);
            }
        }
        if let Some((from, v)) = get("--metrics-listen") {
            c.metrics_listen = Some(v.trim().parse().map_err(|e| {
                err(format!(
                    "{from} {v:?}: {e} (expected an address such as 127.0.0.1:9090)"
                ))
            })?);
        }
        if let Some((from, v)) = get("--log-format") {
            c.log_format = match v.trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => return Err(err(format!("{from}: expected text or json, not {other:?}"))),
            };
        }
        for (flag, slot) in [
            ("--header-read-timeout", &mut c.header_read_timeout),
            ("--body-read-timeout", &mut c.body_read_timeout),
            ("--drain-timeout", &mut c.drain_timeout),
            ("--max-pacing-wait", &mut c.max_pacing_wait),
        ] {
            if let Some((from, v)) = get(flag) {
                *slot = parse_duration(&v).map_err(|e| err(format!("{from}: {e}")))?;
            }
        }
        if c.header_read_timeout.is_zero()
            || c.body_read_timeout.is_zero()
            || c.max_pacing_wait.is_zero()
        {
            return Err(err(
                "--header-read-timeout, --body-read-timeout and --max-pacing-wait must be above 0",
            ));
        }
        if let Some((_, v)) = get("--store") {
            c.store = v.trim().to_owned();
        }

        // Routes.
        let mut extra: Vec<String> = routes_flags;
        if extra.is_empty() {
            if let Some(v) = env("OAI_GATEWAY_ALLOW_ROUTES") {
                extra = comma_list(&v);
            } else if let Some(f) = &file {
                extra.clone_from(&f.routes);
            }
        }
        let defaults = !switch("--no-default-routes")?;
        c.routes = Routes::new(defaults, switch("--allow-admin-routes")?, &extra)?;

        // Access keys.
        let mut named: Vec<(String, String)> = Vec::new();
        for (i, v) in access_flags.iter().enumerate() {
            let (name, key) = v.split_once('=').ok_or_else(|| {
                err(format!(
                    "--access-key number {}: expected NAME=KEY (the key is not shown)",
                    i + 1
                ))
            })?;
            named.push((name.trim().to_owned(), key.trim().to_owned()));
        }
        if let Some((from, path)) = get("--access-keys-file") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| err(format!("{from}: cannot read {path:?}: {e}")))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut parts = line.split_whitespace();
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(name), Some(key), None) => named.push((name.to_owned(), key.to_owned())),
                    _ => {
                        return Err(err(format!(
                            "{from}: {path:?} line {}: expected `NAME KEY` (the line is not shown)",
                            n + 1
                        )))
                    }
                }
            }
        }
        c.access_keys = AccessKeys::new(named)?;

        // The server's key.
        c.server_key = credentials(DEFAULT_KEY_ENV, env);

        // Fallback upstreams: the flags, else the variable, else the file.
        let (from, specs) = if !fallback_flags.is_empty() {
            ("--fallback-upstream".to_owned(), fallback_flags)
        } else if let Some(v) = env("OAI_GATEWAY_FALLBACK_UPSTREAMS") {
            ("OAI_GATEWAY_FALLBACK_UPSTREAMS".to_owned(), comma_list(&v))
        } else if let Some(f) = &file {
            (
                format!("{} key fallback-upstreams", f.shown),
                f.fallbacks.clone(),
            )
        } else {
            (String::new(), Vec::new())
        };
        for (i, spec) in specs.iter().enumerate() {
            let fb = FallbackUpstream::parse(spec, env)
                .map_err(|e| err(format!("{from} number {}: {e}", i + 1)))?;
            c.fallbacks.push(fb);
        }
        c.check()?;
        Ok(Command::Run(Box::new(c)))
    }

    /// The cap on the bytes of JSON bodies buffered at once across all connections:
    /// `--max-buffered-bytes`, else 8 × `--max-body-bytes` (64 MiB by default).
    pub fn buffered_bytes_cap(&self) -> usize {
        self.max_buffered_bytes
            .unwrap_or_else(|| self.max_body_bytes.saturating_mul(8))
    }

    /// Checks what can be checked without the network: the upstream URL, the key setup, the
    /// CA file. [`Gateway::new`](crate::Gateway::new) calls it too.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming what is wrong.
    pub fn check(&self) -> Result<(), ConfigError> {
        oai_resilience::OpenAiLayer::new()
            .try_base_url(&self.upstream)
            .map_err(|e| err(format!("--upstream: {e}")))?;
        if self.max_body_bytes == 0 || self.max_connections == 0 {
            return Err(err(
                "--max-body-bytes and --max-connections must be above 0",
            ));
        }
        if self
            .max_buffered_bytes
            .is_some_and(|b| b < self.max_body_bytes)
        {
            return Err(err(
                "--max-buffered-bytes must be at least --max-body-bytes (else a body of the \
                 largest size could never be buffered)",
            ));
        }
        if !self.access_keys.is_empty() {
            let Some(server) = &self.server_key else {
                return Err(err(
                    "access keys are configured but OPENAI_API_KEY is not set: the gateway has \
                     no key to send for the callers that present one",
                ));
            };
            if self
                .access_keys
                .verify(server.key().expose_secret().as_bytes())
                .is_some()
            {
                return Err(err(
                    "an access key is the same as OPENAI_API_KEY: give clients keys of their own",
                ));
            }
        }
        for (i, fb) in self.fallbacks.iter().enumerate() {
            let at = format!("--fallback-upstream number {}", i + 1);
            oai_resilience::OpenAiLayer::new()
                .try_base_url(&fb.upstream)
                .map_err(|e| err(format!("{at}: {e}")))?;
            if self.access_keys.is_empty() {
                // Each caller's own key goes to every route: the routes must take it as it
                // comes.
                if fb.key_env != DEFAULT_KEY_ENV {
                    return Err(err(format!(
                        "{at}: key-env={} needs access keys: without them each caller's own key \
                         is sent to every upstream and the server's keys are never used",
                        fb.key_env
                    )));
                }
                if fb.auth != self.upstream_auth {
                    return Err(err(format!(
                        "{at}: an auth header other than --upstream-auth-header needs access \
                         keys: without them each caller's own key is sent to every upstream as \
                         the primary takes it"
                    )));
                }
            } else {
                let Some(key) = &fb.key else {
                    return Err(err(format!(
                        "{at}: {} (its key-env) is not set: the gateway has no key to send there",
                        fb.key_env
                    )));
                };
                if self
                    .access_keys
                    .verify(key.key().expose_secret().as_bytes())
                    .is_some()
                {
                    return Err(err(format!(
                        "{at}: an access key is the same as {}: give clients keys of their own",
                        fb.key_env
                    )));
                }
            }
        }
        if let Some(path) = &self.upstream_ca {
            crate::upstream::read_ca(path)?;
        }
        Ok(())
    }
}

/// The settings of a `--config` TOML file, as the strings a flag would carry.
struct FileSettings {
    /// How messages name the file: `--config "gateway.toml"`.
    shown: String,
    /// Keys of flags with a value (without the leading `--`) -> value.
    values: std::collections::HashMap<String, String>,
    /// Keys of switches -> on or off.
    switches: std::collections::HashMap<String, bool>,
    /// `allow-routes`.
    routes: Vec<String>,
    /// `fallback-upstreams`.
    fallbacks: Vec<String>,
}

/// Keys whose value is a path, resolved relative to the file.
const PATH_KEYS: &[&str] = &["upstream-ca", "access-keys-file"];

impl FileSettings {
    /// Reads and checks the file `path` (named by `from`).
    fn read(from: &str, path: &Path) -> Result<FileSettings, ConfigError> {
        let shown = format!("{from} {:?}", path.display().to_string());
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("{shown}: cannot read the file: {e}")))?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
            err(format!(
                "{shown}: not valid TOML{at}: {}",
                e.message().trim().replace('\n', " ")
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        let mut out = FileSettings {
            shown,
            values: Default::default(),
            switches: Default::default(),
            routes: Vec::new(),
            fallbacks: Vec::new(),
        };
        for (raw_key, value) in &table {
            let key = raw_key.replace('_', "-");
            let flag = format!("--{key}");
            let bad = |expected: &str| {
                err(format!(
                    "{}: key {raw_key}: expected {expected}, not {}",
                    out.shown,
                    value.type_str()
                ))
            };
            if FLAGS_WITH_VALUE.iter().any(|(f, _)| *f == flag) {
                let v = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    _ => return Err(bad("a string or a number")),
                };
                let v = if PATH_KEYS.contains(&key.as_str()) && Path::new(&v).is_relative() {
                    base.join(&v).display().to_string()
                } else {
                    v
                };
                out.values.insert(key, v);
            } else if SWITCHES.iter().any(|(f, _)| *f == flag) {
                match value {
                    toml::Value::Boolean(b) => {
                        out.switches.insert(key, *b);
                    }
                    _ => return Err(bad("true or false")),
                }
            } else if key == "allow-routes" {
                let toml::Value::Array(items) = value else {
                    return Err(bad("an array of path prefixes"));
                };
                for item in items {
                    match item {
                        toml::Value::String(s) => out.routes.push(s.clone()),
                        _ => return Err(bad("an array of strings")),
                    }
                }
            } else if key == "fallback-upstreams" || key == "fallback-upstream" {
                let items = match value {
                    toml::Value::Array(items) => items.clone(),
                    toml::Value::String(_) => vec![value.clone()],
                    _ => return Err(bad("an array of \"URL [key-env=NAME] [auth-header=NAME] [model=MODEL]\" strings")),
                };
                for item in items {
                    match item {
                        toml::Value::String(s) => out.fallbacks.push(s),
                        _ => return Err(bad("an array of strings")),
                    }
                }
            } else if key == "access-key" || key == "access-keys" {
                return Err(err(format!(
                    "{}: key {raw_key}: access keys are not read from the config file; name a \
                     file of them with access-keys-file",
                    out.shown
                )));
            } else {
                return Err(err(format!(
                    "{}: unknown key {raw_key:?} (keys are the flags' names without the dashes, \
                     such as max-body-bytes)",
                    out.shown
                )));
            }
        }
        Ok(out)
    }
}

/// The items of a comma-separated variable, trimmed, without empty ones.
fn comma_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_auth_header(v: &str) -> Result<UpstreamAuth, String> {
    let v = v.trim().to_ascii_lowercase();
    if v == "authorization" || v == "bearer" {
        return Ok(UpstreamAuth::Bearer);
    }
    let name =
        HeaderName::from_bytes(v.as_bytes()).map_err(|_| format!("{v:?} is not a header name"))?;
    Ok(UpstreamAuth::Header(name))
}

fn parse_count(v: &str) -> Result<usize, String> {
    let v = v.trim().replace('_', "");
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        Ok(_) => Err("must be above 0".to_owned()),
        Err(_) => Err(format!("{v:?} is not a whole number")),
    }
}

/// `30`, `30s`, `500ms`, `2m`.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let bad = || format!("{v:?} is not a duration (use 30, 30s, 500ms or 2m)");
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("").is_err());
    }
}
