//! The shape of the generated tables (`rules_gen.rs`) and the endpoints they cover.

use std::fmt;

use http::Method;

/// A JSON type bit set; `T_ANY` (empty) accepts every type.
pub(crate) type Types = u8;
pub(crate) const T_ANY: Types = 0;
pub(crate) const T_STRING: Types = 1;
pub(crate) const T_NUMBER: Types = 2;
pub(crate) const T_INTEGER: Types = 4;
pub(crate) const T_BOOLEAN: Types = 8;
pub(crate) const T_ARRAY: Types = 16;
pub(crate) const T_OBJECT: Types = 32;

/// One schema node, summarised from `rules.json`. Every field is a constraint the spec states
/// (or, for the few prose limits, that the generator's `OVERRIDES` cite).
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) types: Types,
    pub(crate) nullable: bool,
    pub(crate) deprecated: bool,
    /// Inside a subtree whose nested rules are unconfirmed (Responses `input`/`tools`): a value
    /// that no alternative explains passes.
    pub(crate) lenient: bool,
    /// A closed enum (open `known_values` lists are not in the tables).
    pub(crate) enum_values: &'static [&'static str],
    pub(crate) minimum: Option<f64>,
    pub(crate) maximum: Option<f64>,
    /// The value must fit in an `i64` (the spec's ±9.2e18 bounds).
    pub(crate) int64: bool,
    pub(crate) min_items: Option<u32>,
    pub(crate) max_items: Option<u32>,
    pub(crate) min_length: Option<u32>,
    pub(crate) max_length: Option<u32>,
    pub(crate) max_properties: Option<u32>,
    pub(crate) key_max_length: Option<u32>,
    pub(crate) format: Format,
    pub(crate) items: Option<&'static Node>,
    pub(crate) properties: &'static [Prop],
    pub(crate) required: &'static [&'static str],
    pub(crate) additional: Additional,
    /// `oneOf`/`anyOf` alternatives: the value is valid if any one is.
    pub(crate) alternatives: &'static [&'static Node],
    /// The property whose `const` value tells the alternatives apart.
    pub(crate) discriminator: Option<&'static str>,
}

/// A named property of an object node.
#[derive(Debug)]
pub(crate) struct Prop {
    pub(crate) name: &'static str,
    pub(crate) node: &'static Node,
}

/// What an object does with keys it does not declare.
#[derive(Debug)]
pub(crate) enum Additional {
    /// Accepted unchecked.
    Allowed,
    /// Rejected (`additionalProperties: false`).
    Forbidden,
    /// Each value must match the node (a map such as `metadata`).
    Schema(&'static Node),
}

/// A string format checked by hand (the spec states it in prose only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    None,
    /// `FunctionObject.name`: a-z, A-Z, 0-9, `_` and `-`.
    FunctionName,
}

impl Node {
    /// The constant value of `key` in this (object) node, when it is a one-value enum.
    pub(crate) fn const_of(&self, key: &str) -> Option<&'static str> {
        let prop = self
            .properties
            .iter()
            .find(|p| super::check::same(p.name, key))?;
        match prop.node.enum_values {
            [only] => Some(only),
            _ => None,
        }
    }
}

/// An endpoint whose request body the generated tables describe.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// `POST /chat/completions` (`CreateChatCompletionRequest`).
    ChatCompletions,
    /// `POST /completions` (`CreateCompletionRequest`).
    Completions,
    /// `POST /embeddings` (`CreateEmbeddingRequest`).
    Embeddings,
    /// `POST /responses` (`CreateResponse`).
    Responses,
    /// `POST /moderations` (`CreateModerationRequest`).
    Moderations,
    /// `POST /images/generations` (`CreateImageRequest`).
    ImageGenerations,
    /// `POST /audio/speech` (`CreateSpeechRequest`).
    AudioSpeech,
}

impl Endpoint {
    /// Every endpoint the tables cover.
    pub const ALL: [Endpoint; 7] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::Moderations,
        Endpoint::ImageGenerations,
        Endpoint::AudioSpeech,
    ];

    /// The path as the spec writes it, without the `/v1` prefix: `/chat/completions`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Responses => "/responses",
            Endpoint::Moderations => "/moderations",
            Endpoint::ImageGenerations => "/images/generations",
            Endpoint::AudioSpeech => "/audio/speech",
        }
    }

    /// The HTTP method (all are `POST`).
    pub fn method(self) -> Method {
        Method::POST
    }

    /// The spec's name for the request schema: `CreateChatCompletionRequest`, …
    pub fn schema_name(self) -> &'static str {
        self.root_entry().1
    }

    /// The endpoint whose spec path is `path` (`/chat/completions`, with or without `/v1` in
    /// front and a trailing `/`).
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let path = path.strip_suffix('/').unwrap_or(path);
        let path = path.strip_prefix("/v1").unwrap_or(path);
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }

    /// The top-level body parameters the spec declares for this endpoint, in spec order.
    pub fn parameters(self) -> impl Iterator<Item = &'static str> {
        self.root().properties.iter().map(|p| p.name)
    }

    /// The parameters the body must contain (none for `/responses`).
    pub fn required(self) -> &'static [&'static str] {
        self.root().required
    }

    pub(crate) fn root(self) -> &'static Node {
        self.root_entry().2
    }

    fn root_entry(self) -> &'static (Endpoint, &'static str, &'static Node) {
        super::rules_gen::ROOTS
            .iter()
            .find(|(e, _, _)| *e == self)
            .expect("every endpoint has a generated root")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "POST {}", self.path())
    }
}
