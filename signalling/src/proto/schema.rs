//! The JSON Schemas of the protocol, generated from its types.
//!
//! `docs/protocol.md` shows one schema per frame type under its
//! ``#### `type` `` heading. They are written by
//! `CONFER_WRITE_SCHEMAS=1 cargo test -p confer-signalling --lib proto`
//! and checked by the same test without the variable.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::Value;

use super::server::CallRecord;
use super::{Request, ServerFrame};

/// The schema of every client frame, by `type`.
#[must_use]
pub fn client_frames() -> BTreeMap<String, Value> {
    let settings = SchemaSettings::draft2020_12()
        .for_deserialize()
        .with(|s| s.inline_subschemas = true);
    one_per_type(SchemaGenerator::new(settings).into_root_schema_for::<Request>())
}

/// The schema of every server frame, by `type`. Every object that lists
/// its properties is closed (`additionalProperties: false`), so that a
/// field the document does not show fails the suite's schema checks; an
/// optional field is left out rather than sent as `null`, so its schema
/// does not allow `null` (a field that is sometimes `null` says so with a
/// schema of its own, as `call_topology`'s `peer` does).
#[must_use]
pub fn server_frames() -> BTreeMap<String, Value> {
    let settings = SchemaSettings::draft2020_12()
        .for_serialize()
        .with(|s| s.inline_subschemas = true);
    let mut frames =
        one_per_type(SchemaGenerator::new(settings).into_root_schema_for::<ServerFrame>());
    frames.values_mut().for_each(close);
    frames
}

/// The schema of `data.call` in the messages that record calls.
#[must_use]
pub fn call_records() -> BTreeMap<String, Value> {
    let settings = SchemaSettings::draft2020_12()
        .for_serialize()
        .with(|s| s.inline_subschemas = true);
    let mut schema = SchemaGenerator::new(settings)
        .into_root_schema_for::<CallRecord>()
        .to_value();
    if let Some(object) = schema.as_object_mut() {
        for meta in ["$schema", "title", "description"] {
            object.remove(meta);
        }
    }
    tidy(&mut schema);
    close(&mut schema);
    BTreeMap::from([("data.call".to_owned(), schema)])
}

fn close(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".to_owned(), Value::Bool(false));
            }
            // What a field is when a client leaves it out says nothing of
            // what the server sends.
            map.remove("default");
            let required: Vec<String> = map
                .get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if let Some(Value::Object(properties)) = map.get_mut("properties") {
                for (name, property) in properties.iter_mut() {
                    if !required.contains(name) {
                        never_null(property);
                    }
                }
            }
            map.values_mut().for_each(close);
        }
        Value::Array(items) => items.iter_mut().for_each(close),
        _ => {}
    }
}

/// `Option<T>`'s schema without its `null`: `T`'s.
fn never_null(schema: &mut Value) {
    let Value::Object(map) = schema else { return };
    if let Some(Value::Array(types)) = map.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            map.insert("type".to_owned(), only);
        }
    }
    let inner = match map.get("anyOf") {
        Some(Value::Array(any))
            if any.len() == 2 && any[1] == serde_json::json!({"type": "null"}) =>
        {
            any[0].clone()
        }
        _ => return,
    };
    map.remove("anyOf");
    if let Value::Object(inner) = inner {
        for (k, v) in inner {
            map.entry(k).or_insert(v);
        }
    }
}

/// Splits the `oneOf` of an enum tagged by `type` into one schema per tag.
fn one_per_type(root: schemars::Schema) -> BTreeMap<String, Value> {
    let mut root = root.to_value();
    let Some(Value::Array(variants)) = root.get_mut("oneOf").map(Value::take) else {
        panic!("a tagged enum's schema is a oneOf");
    };
    variants
        .into_iter()
        .map(|mut variant| {
            let name = variant["properties"]["type"]["const"]
                .as_str()
                .expect("every variant has a constant type")
                .to_owned();
            // The document says in prose what the frame is for.
            if let Some(object) = variant.as_object_mut() {
                object.remove("description");
            }
            tidy(&mut variant);
            (name, variant)
        })
        .collect()
}

/// Drops what only Rust knows (the integer formats, `uint64` …, and the
/// line breaks of doc comments) and what says nothing (`"default": null`:
/// a field left out).
fn tidy(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(text)) = map.get_mut("description") {
                *text = text.replace('\n', " ");
            }
            if map.get("default") == Some(&Value::Null) {
                map.remove("default");
            }
            if map
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| f.starts_with("int") || f.starts_with("uint"))
            {
                map.remove("format");
            }
            map.values_mut().for_each(tidy);
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// The order keys of a schema are printed in; others follow, sorted.
const KEY_ORDER: &[&str] = &[
    "type",
    "const",
    "enum",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "description",
    "default",
    "items",
    "properties",
    "required",
    "additionalProperties",
];

/// Pretty JSON (two-space indent) with a schema's keywords in a reading
/// order and its properties in the order of `required`, then sorted.
#[must_use]
pub fn render(schema: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, schema, 0);
    out
}

fn write_value(out: &mut String, value: &Value, depth: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|k| {
                KEY_ORDER
                    .iter()
                    .position(|o| o == k)
                    .unwrap_or(KEY_ORDER.len())
            });
            out.push_str("{\n");
            for (i, key) in keys.iter().enumerate() {
                indent(out, depth + 1);
                let _ = write!(out, "{}: ", Value::String((*key).clone()));
                if key.as_str() == "properties" {
                    write_properties(out, &map[*key], map.get("required"), depth + 1);
                } else {
                    write_value(out, &map[*key], depth + 1);
                }
                out.push_str(if i + 1 < keys.len() { ",\n" } else { "\n" });
            }
            indent(out, depth);
            out.push('}');
        }
        Value::Array(items) if !items.is_empty() => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                indent(out, depth + 1);
                write_value(out, item, depth + 1);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            indent(out, depth);
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn write_properties(out: &mut String, properties: &Value, required: Option<&Value>, depth: usize) {
    let Value::Object(map) = properties else {
        return write_value(out, properties, depth);
    };
    let required: Vec<&str> = required
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| {
        (
            required
                .iter()
                .position(|r| r == k)
                .unwrap_or(required.len()),
            (*k).clone(),
        )
    });
    out.push_str("{\n");
    for (i, key) in keys.iter().enumerate() {
        indent(out, depth + 1);
        let _ = write!(out, "{}: ", Value::String((*key).clone()));
        write_value(out, &map[*key], depth + 1);
        out.push_str(if i + 1 < keys.len() { ",\n" } else { "\n" });
    }
    indent(out, depth);
    out.push('}');
}

fn indent(out: &mut String, depth: usize) {
    out.push_str(&"  ".repeat(depth));
}

/// `doc` with the ```` ```json ```` block under each ``#### `name` `` of
/// `section` replaced by the schema of that name; an error names a schema
/// without a heading or a heading without a schema.
pub fn write_into(
    doc: &str,
    section: &str,
    schemas: &BTreeMap<String, Value>,
) -> Result<String, String> {
    let start = doc
        .find(&format!("\n{section}\n"))
        .ok_or_else(|| format!("no {section:?} section"))?
        + section.len()
        + 2;
    let end = doc[start..].find("\n### ").map_or(doc.len(), |e| start + e);
    let mut out = String::from(&doc[..start]);
    let mut seen = Vec::new();
    let mut lines = doc[start..end].split_inclusive('\n');
    let mut name: Option<String> = None;
    while let Some(line) = lines.next() {
        if let Some(n) = line
            .trim_end()
            .strip_prefix("#### `")
            .and_then(|l| l.strip_suffix('`'))
        {
            name = Some(n.to_owned());
        }
        if line.trim_end() == "```json" {
            let heading = name.take().ok_or("a ```json block without a heading")?;
            let schema = schemas
                .get(&heading)
                .ok_or_else(|| format!("`{heading}` has no type in the protocol"))?;
            for l in lines.by_ref() {
                if l.trim_end() == "```" {
                    break;
                }
            }
            let _ = write!(out, "```json\n{}\n```\n", render(schema));
            seen.push(heading);
            continue;
        }
        out.push_str(line);
    }
    if let Some(missing) = schemas.keys().find(|k| !seen.contains(k)) {
        return Err(format!("`{missing}` has no schema in {section:?}"));
    }
    out.push_str(&doc[end..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");

    #[test]
    fn the_protocol_document_shows_the_schemas_of_the_types() {
        let doc = std::fs::read_to_string(DOC).unwrap();
        let written = write_into(&doc, "### Client frames", &client_frames())
            .and_then(|doc| write_into(&doc, "### Server frames", &server_frames()))
            .and_then(|doc| write_into(&doc, "### Calls", &call_records()))
            .unwrap();
        if std::env::var_os("CONFER_WRITE_SCHEMAS").is_some() {
            std::fs::write(DOC, &written).unwrap();
        } else {
            assert!(
                written == doc,
                "docs/protocol.md differs from the protocol's types; rewrite its schemas with \
                 CONFER_WRITE_SCHEMAS=1 cargo test -p confer-signalling --lib proto"
            );
        }
    }

    #[test]
    fn the_known_types_are_the_variants() {
        let mut known: Vec<&str> = super::super::KNOWN_TYPES.to_vec();
        known.sort_unstable();
        let schemas = client_frames();
        let types: Vec<&str> = schemas.keys().map(String::as_str).collect();
        assert_eq!(known, types);
    }
}
