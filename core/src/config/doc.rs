//! A configuration document as a tree of values that remember where they
//! were written ([`Node`]), so that several files can be merged into one
//! document (`include`) and the merged document still points every error
//! at the right file, line and column.
//!
//! Spans are offsets into the joint text of every file read (see
//! `include::Sources`): each file's spans are shifted by where that file
//! starts in it. [`parse`] builds a tree from one file's text;
//! [`Node`] then deserializes into the `raw` structs exactly as the toml
//! crate would from the text (the same messages, spans for
//! [`toml::Spanned`] values, errors carrying the span of the key or value
//! at fault).

use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::forward_to_deserialize_any;
use serde_spanned::__unstable as spanned;
use toml::Value;

/// A value and the span of its text.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Node {
    pub span: Range<usize>,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind {
    /// A table (`[x]`, an inline table, or the document), keys in file order.
    Table(Vec<Entry>),
    /// An array, including an array of tables (`[[x]]`).
    Array(Vec<Node>),
    /// A string, number, boolean or date; never a table or array.
    Leaf(Value),
}

/// One key of a table.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub key: String,
    pub key_span: Range<usize>,
    pub value: Node,
}

impl Node {
    /// The entries when this is a table.
    pub fn entries_mut(&mut self) -> Option<&mut Vec<Entry>> {
        match &mut self.kind {
            Kind::Table(e) => Some(e),
            _ => None,
        }
    }

    /// Whether this is an array whose every element is a table (an array of
    /// tables, however it was written).
    pub fn is_table_array(&self) -> bool {
        match &self.kind {
            Kind::Array(a) => a.iter().all(|n| matches!(n.kind, Kind::Table(_))),
            _ => false,
        }
    }

    /// The value without its spans.
    pub fn to_value(&self) -> Value {
        match &self.kind {
            Kind::Leaf(v) => v.clone(),
            Kind::Array(a) => Value::Array(a.iter().map(Node::to_value).collect()),
            Kind::Table(entries) => Value::Table(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_value()))
                    .collect(),
            ),
        }
    }
}

/// A TOML syntax error: where (a span of the joint text) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SyntaxError {
    pub span: Range<usize>,
    pub message: String,
}

/// Parses one file's `text`, which starts at offset `base` of the joint
/// text; the root is always a table.
pub(super) fn parse(text: &str, base: usize) -> Result<Node, SyntaxError> {
    let doc = toml_edit::ImDocument::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        SyntaxError {
            span: span.start + base..span.end + base,
            message: e.message().to_string(),
        }
    })?;
    Ok(table(doc.as_table(), base..base, base))
}

fn shift(span: Option<Range<usize>>, base: usize) -> Option<Range<usize>> {
    span.map(|s| s.start + base..s.end + base)
}

/// A table; `fallback` is the span to use when the table has none of its
/// own (an implicit table, such as `a` of `[a.b]`).
fn table(t: &toml_edit::Table, fallback: Range<usize>, base: usize) -> Node {
    let span = shift(t.span(), base).unwrap_or(fallback);
    let entries = t
        .iter()
        .filter_map(|(k, item)| {
            let key_span = shift(t.key(k).and_then(|k| k.span()), base).unwrap_or(span.clone());
            let value = match item {
                toml_edit::Item::None => return None,
                toml_edit::Item::Value(v) => value(v, key_span.clone(), base),
                toml_edit::Item::Table(t) => table(t, key_span.clone(), base),
                toml_edit::Item::ArrayOfTables(a) => {
                    let aspan = shift(a.span(), base).unwrap_or(key_span.clone());
                    Node {
                        kind: Kind::Array(
                            a.iter().map(|t| table(t, aspan.clone(), base)).collect(),
                        ),
                        span: aspan,
                    }
                }
            };
            Some(Entry {
                key: k.to_string(),
                key_span,
                value,
            })
        })
        .collect();
    Node {
        span,
        kind: Kind::Table(entries),
    }
}

fn value(v: &toml_edit::Value, fallback: Range<usize>, base: usize) -> Node {
    use toml_edit::Value as V;
    let span = shift(v.span(), base).unwrap_or(fallback);
    let kind = match v {
        V::String(s) => Kind::Leaf(Value::String(s.value().clone())),
        V::Integer(i) => Kind::Leaf(Value::Integer(*i.value())),
        V::Float(f) => Kind::Leaf(Value::Float(*f.value())),
        V::Boolean(b) => Kind::Leaf(Value::Boolean(*b.value())),
        V::Datetime(d) => Kind::Leaf(Value::Datetime(*d.value())),
        V::Array(a) => Kind::Array(a.iter().map(|x| value(x, span.clone(), base)).collect()),
        V::InlineTable(t) => {
            let entries = t
                .iter()
                .map(|(k, x)| {
                    let key_span =
                        shift(t.key(k).and_then(|k| k.span()), base).unwrap_or(span.clone());
                    Entry {
                        key: k.to_string(),
                        value: value(x, key_span.clone(), base),
                        key_span,
                    }
                })
                .collect();
            Kind::Table(entries)
        }
    };
    Node { span, kind }
}

/// A deserialization error and, once known, the span it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DeError {
    pub message: String,
    pub span: Option<Range<usize>>,
}

impl DeError {
    fn at(mut self, span: &Range<usize>) -> DeError {
        if self.span.is_none() {
            self.span = Some(span.clone());
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            span: None,
        }
    }
}

/// A leaf's value is handed to the toml crate's own deserializer, so that
/// scalars and dates read exactly as from a file; only its error type
/// differs.
fn leaf_error(e: toml::de::Error) -> DeError {
    DeError {
        message: e.message().to_string(),
        span: None,
    }
}

impl<'de> de::Deserializer<'de> for Node {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let span = self.span;
        match self.kind {
            // As the toml crate hands a date over: a one-entry map.
            Kind::Leaf(Value::Datetime(d)) => visitor.visit_map(DateMap(Some(d.to_string()))),
            Kind::Leaf(v) => de::Deserializer::deserialize_any(v, visitor).map_err(leaf_error),
            Kind::Array(a) => visitor.visit_seq(Seq(a.into_iter())),
            Kind::Table(entries) => visitor.visit_map(Map {
                entries: entries.into_iter(),
                value: None,
            }),
        }
        .map_err(|e| e.at(&span))
    }

    // `None` is a missing key, so a present one is always `Some`.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let span = self.span.clone();
        visitor.visit_some(self).map_err(|e| e.at(&span))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let span = self.span.clone();
        visitor.visit_newtype_struct(self).map_err(|e| e.at(&span))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if spanned::is_spanned(name, fields) {
            let span = self.span.clone();
            return visitor
                .visit_map(SpannedMap {
                    span: span.clone(),
                    value: Some(self),
                    field: 0,
                })
                .map_err(|e| e.at(&span));
        }
        match self.kind {
            Kind::Leaf(v) => {
                let span = self.span;
                de::Deserializer::deserialize_struct(v, name, fields, visitor)
                    .map_err(leaf_error)
                    .map_err(|e| e.at(&span))
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let span = self.span;
        match self.kind {
            Kind::Leaf(v) => de::Deserializer::deserialize_enum(v, name, variants, visitor)
                .map_err(leaf_error)
                .map_err(|e| e.at(&span)),
            _ => Err(DeError {
                message: "wanted a string".to_string(),
                span: Some(span),
            }),
        }
    }

    forward_to_deserialize_any! {
        bool u8 u16 u32 u64 i8 i16 i32 i64 f32 f64 char str string seq
        bytes byte_buf map unit ignored_any unit_struct tuple_struct tuple identifier
    }
}

struct Seq(std::vec::IntoIter<Node>);

impl<'de> SeqAccess<'de> for Seq {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.0.next() {
            None => Ok(None),
            Some(n) => {
                let span = n.span.clone();
                seed.deserialize(n).map(Some).map_err(|e| e.at(&span))
            }
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Map {
    entries: std::vec::IntoIter<Entry>,
    value: Option<Node>,
}

impl<'de> MapAccess<'de> for Map {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(e) = self.entries.next() else {
            return Ok(None);
        };
        // The key is a string leaf at the key's span (so that a
        // `Spanned<String>` key gets one, and an unknown field points there).
        let key = Node {
            span: e.key_span.clone(),
            kind: Kind::Leaf(Value::String(e.key)),
        };
        self.value = Some(e.value);
        seed.deserialize(key)
            .map(Some)
            .map_err(|err| err.at(&e.key_span))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some(n) => {
                let span = n.span.clone();
                seed.deserialize(n).map_err(|e| e.at(&span))
            }
            None => Err(de::Error::custom("a value was asked for before its key")),
        }
    }
}

/// What `toml::Spanned` asks for: the start, the end, then the value.
struct SpannedMap {
    span: Range<usize>,
    value: Option<Node>,
    field: u8,
}

impl<'de> MapAccess<'de> for SpannedMap {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let name = match self.field {
            0 => spanned::START_FIELD,
            1 => spanned::END_FIELD,
            2 => spanned::VALUE_FIELD,
            _ => return Ok(None),
        };
        seed.deserialize(de::value::BorrowedStrDeserializer::new(name))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let field = self.field;
        self.field += 1;
        match field {
            0 => seed.deserialize(self.span.start.into_deserializer()),
            1 => seed.deserialize(self.span.end.into_deserializer()),
            _ => match self.value.take() {
                Some(n) => seed.deserialize(n),
                None => Err(de::Error::custom("a spanned value was read twice")),
            },
        }
    }
}

/// A date as the toml crate's `Datetime` expects to read it.
struct DateMap(Option<String>);

impl<'de> MapAccess<'de> for DateMap {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        if self.0.is_none() {
            return Ok(None);
        }
        seed.deserialize(de::value::BorrowedStrDeserializer::new(
            toml_datetime::__unstable::FIELD,
        ))
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.0.take() {
            Some(s) => seed.deserialize(s.into_deserializer()),
            None => Err(de::Error::custom("a date was read twice")),
        }
    }
}
