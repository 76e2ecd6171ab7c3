//! The root lookup: which generated node checks an endpoint's body. Apart from `schema.rs`,
//! which the generated tables import, so that the tables sit between the two.

use super::rules_gen;
use super::schema::{Endpoint, Node};

/// What the generated tables say about an endpoint (its root node). Here rather than in
/// `schema.rs`, which the tables import: the tables sit between the two.
impl Endpoint {
    /// The spec's name for the request schema: `CreateChatCompletionRequest`, …
    pub fn schema_name(self) -> &'static str {
        self.root_entry().1
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
        rules_gen::ROOTS
            .iter()
            .find(|(e, _, _)| *e == self)
            .expect("every endpoint has a generated root")
    }
}
