//! The caller's predicates that override a policy's rule for some errors: the retry policy's
//! `retry_if`/`never_retry_if` and the fallback policy's `fall_back_if`/`never_fall_back_if`.

use std::sync::Arc;

use crate::error::Error;

type Predicate = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

/// Predicates that say yes (`also`) or no (`never`) to an error before the policy's own rule;
/// a `never` predicate wins.
#[derive(Clone, Default)]
pub(crate) struct Overrides {
    also: Vec<Predicate>,
    never: Vec<Predicate>,
}

impl Overrides {
    /// Adds a predicate that says yes.
    pub(crate) fn also(&mut self, pred: impl Fn(&Error) -> bool + Send + Sync + 'static) {
        self.also.push(Arc::new(pred));
    }

    /// Adds a predicate that says no, whatever else says.
    pub(crate) fn never(&mut self, pred: impl Fn(&Error) -> bool + Send + Sync + 'static) {
        self.never.push(Arc::new(pred));
    }

    /// Whether a `never` predicate holds for `err`.
    pub(crate) fn refuses(&self, err: &Error) -> bool {
        self.never.iter().any(|p| p(err))
    }

    /// `Some(false)` when a `never` predicate holds for `err`, else `Some(true)` when an
    /// `also` predicate does, else `None` (the policy's own rule decides).
    pub(crate) fn verdict(&self, err: &Error) -> Option<bool> {
        if self.refuses(err) {
            Some(false)
        } else if self.also.iter().any(|p| p(err)) {
            Some(true)
        } else {
            None
        }
    }

    /// How many `also` and `never` predicates there are (for `Debug`).
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.also.len(), self.never.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn never_wins_then_also_then_no_verdict() {
        let mut o = Overrides::default();
        assert_eq!(o.verdict(&Error::new(ErrorKind::NotFound)), None);
        o.also(|e| e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::Conflict);
        o.never(|e| e.kind() == ErrorKind::Conflict);
        assert_eq!(o.verdict(&Error::new(ErrorKind::NotFound)), Some(true));
        assert_eq!(o.verdict(&Error::new(ErrorKind::Conflict)), Some(false));
        assert!(o.refuses(&Error::new(ErrorKind::Conflict)));
        assert!(!o.refuses(&Error::new(ErrorKind::NotFound)));
        assert_eq!(o.verdict(&Error::new(ErrorKind::ServerError)), None);
        assert_eq!(o.counts(), (1, 1));
    }
}
