//! A subscriber that records the fields of every span, and the name of the
//! span it opened in (`parent`), for tests that check the `idempotent` span.
//! One stack of entered spans: for a current-thread runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The fields of every span, as recorded, and the spans entered now.
#[derive(Clone, Default)]
pub(crate) struct Spans(
    Arc<Mutex<Vec<HashMap<String, String>>>>,
    Arc<Mutex<Vec<tracing::span::Id>>>,
);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl tracing::Subscriber for Spans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut spans = self.0.lock().unwrap();
        let mut fields = HashMap::from([("name".to_owned(), span.metadata().name().to_owned())]);
        let parent = match span.parent() {
            Some(parent) => Some(parent.clone()),
            None if span.is_contextual() => self.1.lock().unwrap().last().cloned(),
            None => None,
        };
        if let Some(parent) = parent {
            let index = usize::try_from(parent.into_u64()).unwrap() - 1;
            fields.insert("parent".to_owned(), spans[index]["name"].clone());
        }
        span.record(&mut Fields(&mut fields));
        spans.push(fields);
        tracing::span::Id::from_u64(spans.len() as u64)
    }

    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut spans = self.0.lock().unwrap();
        let index = usize::try_from(span.into_u64()).unwrap() - 1;
        values.record(&mut Fields(&mut spans[index]));
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, _: &tracing::Event<'_>) {}

    fn enter(&self, span: &tracing::span::Id) {
        self.1.lock().unwrap().push(span.clone());
    }

    fn exit(&self, span: &tracing::span::Id) {
        let mut entered = self.1.lock().unwrap();
        if let Some(at) = entered.iter().rposition(|id| id == span) {
            entered.remove(at);
        }
    }
}

impl Spans {
    /// The fields of every span named `name`, in the order they opened.
    pub(crate) fn named(&self, name: &str) -> Vec<HashMap<String, String>> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|s| s["name"] == name)
            .cloned()
            .collect()
    }
}
