//! Strategies shared by the fuzz targets (`tests/fuzz_*.rs`): JSON values
//! of every kind — huge numbers, unicode, NUL, deep nesting, long strings,
//! placeholders standing for real ids — and near-valid inputs made from
//! valid templates.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// A JSON scalar: edge numbers, odd strings, or one of `placeholders`
/// (filled in later by [`fill`]).
pub fn leaf(placeholders: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(json!(0)),
            Just(json!(-1)),
            Just(json!(1)),
            Just(json!(200)),
            Just(json!(201)),
            Just(json!(4_294_967_296_u64)),
            Just(json!(u64::MAX)),
            Just(json!(i64::MIN)),
            Just(json!(1e308)),
            Just(json!(-0.0)),
            Just(json!(0.5)),
        ],
        proptest::sample::select(placeholders).prop_map(Value::from),
        prop_oneof![
            Just("audio"),
            Just("video"),
            Just("high"),
            Just("v=0\r\n"),
            Just("00000000-0000-0000-0000-000000000000"),
            Just("a@example.com"),
            Just("\u{0}"),
            Just("a\u{0}b"),
            Just("\u{202e}\u{fe0f}👩‍👩‍👧 Привет 你好"),
        ]
        .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        "[0-9a-f-]{36}".prop_map(Value::from),
        (0usize..4000).prop_map(|n| Value::from("ж".repeat(n))),
    ]
}

/// Any JSON value, nested up to 6 deep, objects keyed by `fields`.
pub fn value(
    fields: &'static [&'static str],
    placeholders: &'static [&'static str],
) -> impl Strategy<Value = Value> {
    leaf(placeholders).prop_recursive(6, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::vec((proptest::sample::select(fields), inner), 0..6).prop_map(
                |fields| {
                    Value::Object(
                        fields
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect::<Map<_, _>>(),
                    )
                }
            ),
        ]
    })
}

/// A template (a JSON object) with, in a third of the cases, fields
/// replaced or added (from `fields`) and, in a quarter, one removed.
pub fn near_valid(
    templates: &'static [&'static str],
    fields: &'static [&'static str],
    placeholders: &'static [&'static str],
) -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(templates),
        prop_oneof![
            2 => Just(Vec::new()),
            1 => proptest::collection::vec(
                (proptest::sample::select(fields), value(fields, placeholders)),
                1..3,
            ),
        ],
        prop_oneof![
            3 => Just(None),
            1 => any::<proptest::sample::Index>().prop_map(Some),
        ],
    )
        .prop_map(|(template, changes, removed)| {
            let mut value: Value = serde_json::from_str(template).unwrap();
            let object = value.as_object_mut().unwrap();
            if let Some(i) = removed
                && !object.is_empty()
            {
                let names: Vec<String> = object.keys().cloned().collect();
                object.remove(i.get(&names));
            }
            for (k, v) in changes {
                object.insert(k.to_owned(), v);
            }
            value
        })
}

/// `text` cut at a random point, or with one byte changed.
pub fn damaged(text: String, at: usize, byte: u8) -> String {
    let mut bytes = text.into_bytes();
    if bytes.is_empty() {
        return String::new();
    }
    let at = at % bytes.len();
    if byte.is_multiple_of(2) {
        bytes.truncate(at);
    } else {
        bytes[at] = byte;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Replaces every string of `v` that is a placeholder by its real value.
pub fn fill(v: &mut Value, ids: &BTreeMap<&'static str, String>) {
    match v {
        Value::String(s) => {
            if let Some(id) = ids.get(s.as_str()) {
                *s = id.clone();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| fill(i, ids)),
        Value::Object(fields) => fields.values_mut().for_each(|f| fill(f, ids)),
        _ => {}
    }
}
