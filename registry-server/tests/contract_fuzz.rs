//! The OpenAPI document says what the server accepts: a seeded fuzzer fetches
//! `/v1/openapi.json` from a real single-node server, generates requests that the
//! document allows, sends them over HTTP, and checks that none fails (5xx) or is refused
//! as invalid (400 `invalid_argument`, `invalid_duration`, `invalid_json`), and that every
//! one reaches a route. Domain answers (404 lease not found, 409 lock held, ...) are fine.
//!
//! Requests come from the document alone: parameters and JSON bodies from their schemas
//! (`$ref`, `type` with `null`, `enum`, `pattern` generated from the regex's syntax tree,
//! `minLength`/`maxLength`, `minimum`/`maximum`, `maxItems`, `additionalProperties` with
//! `propertyNames` and `maxProperties`, `required`, `oneOf`/`not` of `required` sets, a
//! value's `oneOf` of schemas, the `x-duration-min-ms`/`x-duration-max-ms` range of
//! durations, and `x-unique-items-by`, a field no two items of a list may share). Where a schema leaves
//! a value open, the generator goes wide (empty, long, non-ASCII, control characters,
//! large numbers): the server must then accept all of it.
//!
//! Two things are held back for time, not by the document: every duration named `wait`
//! is at most [`WAIT_CAP_MS`], and a blocking query (`index`) always carries one (else a
//! request would block for minutes); membership changes are not sent (adding waits 30 s
//! for a server that does not exist; removing node 1 removes the cluster under test).
//!
//! `CONTRACT_FUZZ_SEED=N` changes the seed, `CONTRACT_FUZZ_ROUNDS=N` the requests per
//! route (default [`ROUNDS`]); `CONTRACT_FUZZ_DOC=FILE` fuzzes the server
//! with another document (say, an older one) to see what that one promised wrongly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use regex_syntax::hir::{Class, Hir, HirKind};
use serde_json::{json, Map, Value};

const SEED: u64 = 0x00c0_47ac_7f22;
/// Requests per route.
const ROUNDS: usize = 16;
/// The longest `wait` a generated request carries.
const WAIT_CAP_MS: u64 = 200;
/// Open-ended (characters, items) in a body's fields, nested in its lists and maps, and
/// in URLs.
const BODY_OPEN: (usize, usize) = (5000, 100);
const NESTED_OPEN: (usize, usize) = (300, 8);
const URL_OPEN: (usize, usize) = (100, 8);
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];
/// Routes not sent, and why.
const SKIPPED: [(&str, &str, &str); 2] = [
    (
        "POST",
        "/v1/cluster/members",
        "waits 30 s for a server that does not exist",
    ),
    (
        "DELETE",
        "/v1/cluster/members/{id}",
        "removing node 1 removes the cluster under test",
    ),
];
/// Error codes a request the document allows must never get: it was refused as invalid,
/// or it did not reach a route.
const NEVER: [&str; 8] = [
    "invalid_argument",
    "invalid_duration",
    "invalid_json",
    "not_found",
    "method_not_allowed",
    "payload_too_large",
    "unsupported_media_type",
    "internal",
];

/// Generates values from the document's schemas.
struct Gen<'a> {
    rng: StdRng,
    doc: &'a Value,
    /// Leases seen in answers: a UUID is one of these half of the time, so requests
    /// also meet live leases.
    leases: Vec<String>,
    regexes: HashMap<String, regex::Regex>,
    /// How long an open-ended string or list may grow here: long in a body's own fields,
    /// shorter inside its lists and maps (so a body stays under the server's size limit)
    /// and in URLs (so a URL stays one the HTTP stack can carry).
    open: (usize, usize),
}

impl<'a> Gen<'a> {
    fn new(seed: u64, doc: &'a Value) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            doc,
            leases: Vec::new(),
            regexes: HashMap::new(),
            open: BODY_OPEN,
        }
    }

    fn resolve(&self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.strip_prefix("#/components/schemas/").unwrap();
                self.resolve(&self.doc["components"]["schemas"][name])
            }
            None => schema,
        }
    }

    fn matches(&mut self, pattern: &str, s: &str) -> bool {
        self.regexes
            .entry(pattern.to_owned())
            .or_insert_with(|| regex::Regex::new(pattern).expect("the document's pattern"))
            .is_match(s)
    }

    /// A value `schema` allows; `name` is the field or parameter it is for.
    fn value(&mut self, schema: &'a Value, name: &str) -> Value {
        let schema = self.resolve(schema);
        if let Some(choices) = schema.get("enum").and_then(Value::as_array) {
            return choices.choose(&mut self.rng).unwrap().clone();
        }
        let is_object = schema.get("properties").is_some() || schema["type"] == "object";
        for key in ["oneOf", "anyOf"] {
            if let (Some(branches), false) = (schema.get(key).and_then(Value::as_array), is_object)
            {
                let branch = branches.choose(&mut self.rng).unwrap();
                return self.value(branch, name);
            }
        }
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            if let [only] = parts.as_slice() {
                return self.value(only, name);
            }
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ if is_object => vec!["object"],
            _ => vec!["string"],
        };
        let non_null: Vec<&str> = types.iter().copied().filter(|t| *t != "null").collect();
        if non_null.is_empty() || (types.contains(&"null") && self.rng.random_bool(0.1)) {
            return Value::Null;
        }
        match *non_null.choose(&mut self.rng).unwrap() {
            "string" => Value::String(self.string(schema, name)),
            "integer" => self.integer(schema),
            "number" => json!(self.rng.random_range(-1e6..1e6)),
            "boolean" => Value::Bool(self.rng.random()),
            "array" => self.array(schema, name),
            "object" => self.object(schema),
            other => panic!("{name}: schema type {other} is not known to the fuzzer"),
        }
    }

    /// A length between `min` and `max`: often an end, often short, sometimes long.
    fn length(&mut self, min: usize, max: Option<usize>, open_max: usize) -> usize {
        let max = max.unwrap_or(open_max).max(min);
        match self.rng.random_range(0..10) {
            0 => min,
            1 => max,
            2..=5 => self.rng.random_range(min..=max.min(min + 8)),
            _ => self.rng.random_range(min..=max),
        }
    }

    fn string(&mut self, schema: &Value, name: &str) -> String {
        if schema["format"] == "uuid" {
            if !self.leases.is_empty() && self.rng.random_bool(0.5) {
                return self.leases.choose(&mut self.rng).unwrap().clone();
            }
            return uuid::Uuid::from_u128(self.rng.random()).to_string();
        }
        let min_ms = schema["x-duration-min-ms"].as_u64();
        let max_ms = schema["x-duration-max-ms"].as_u64();
        let pattern = schema["pattern"].as_str();
        if let (Some(pattern), true) = (pattern, min_ms.is_some() || max_ms.is_some()) {
            let text = self.duration(min_ms.unwrap_or(0), max_ms, name);
            assert!(
                self.matches(pattern, &text),
                "{name}: the spelling {text:?} is outside the document's pattern {pattern}"
            );
            return text;
        }
        let min = schema["minLength"].as_u64().map_or(0, |n| n as usize);
        let max = schema["maxLength"].as_u64().map(|n| n as usize);
        match pattern {
            Some(pattern) => self.matching_pattern(pattern, min, max, name),
            None => {
                let len = self.length(min, max, self.open.0);
                (0..len).map(|_| self.any_char()).collect()
            }
        }
    }

    /// Characters of every kind a free string might hold.
    fn any_char(&mut self) -> char {
        const ODD: &[char] = &[
            ' ', '/', '?', '#', '%', '&', '=', '+', '"', '\\', '\u{0}', '\n', '\t', '\u{7f}',
            '\u{85}', 'é', '日', '😀', '\u{200b}',
        ];
        match self.rng.random_range(0..10) {
            0..=5 => *b"abcxyzABC0189-_.:@"
                .map(char::from)
                .choose(&mut self.rng)
                .unwrap(),
            6..=8 => *ODD.choose(&mut self.rng).unwrap(),
            _ => char::from_u32(self.rng.random_range(0xa0..0x3000)).unwrap_or('x'),
        }
    }

    /// A string `pattern` matches, of `min..=max` characters.
    fn matching_pattern(
        &mut self,
        pattern: &str,
        min: usize,
        max: Option<usize>,
        name: &str,
    ) -> String {
        let hir = regex_syntax::parse(pattern).expect("the document's pattern parses");
        let target = self.length(min, max, 64);
        for _ in 0..200 {
            let mut out = String::new();
            self.matching_hir(&hir, target, &mut out);
            let len = out.chars().count();
            if len >= min && max.is_none_or(|max| len <= max) && self.matches(pattern, &out) {
                return out;
            }
        }
        panic!("{name}: found no string of {min}..{max:?} characters matching {pattern}")
    }

    /// Appends a string `hir` matches; unbounded repetitions aim at `target` characters.
    fn matching_hir(&mut self, hir: &Hir, target: usize, out: &mut String) {
        match hir.kind() {
            HirKind::Empty | HirKind::Look(_) => {}
            HirKind::Literal(literal) => out.push_str(std::str::from_utf8(&literal.0).unwrap()),
            HirKind::Class(Class::Unicode(class)) => {
                let ranges = class.ranges();
                let range = ranges.choose(&mut self.rng).unwrap();
                let c = self
                    .rng
                    .random_range(u32::from(range.start())..=u32::from(range.end()));
                out.push(char::from_u32(c).unwrap_or(range.start()));
            }
            HirKind::Class(Class::Bytes(class)) => {
                let range = class.ranges().choose(&mut self.rng).unwrap();
                out.push(char::from(
                    self.rng.random_range(range.start()..=range.end()),
                ));
            }
            HirKind::Repetition(rep) => {
                let room = target.saturating_sub(out.chars().count()) as u32;
                let extra_max = rep.max.map_or(room.max(1), |max| max - rep.min);
                let count = rep.min + self.rng.random_range(0..=extra_max);
                for _ in 0..count {
                    self.matching_hir(&rep.sub, target, out);
                }
            }
            HirKind::Capture(capture) => self.matching_hir(&capture.sub, target, out),
            HirKind::Concat(parts) => {
                for part in parts {
                    self.matching_hir(part, target, out);
                }
            }
            HirKind::Alternation(branches) => {
                let branch = branches.choose(&mut self.rng).unwrap();
                self.matching_hir(branch, target, out);
            }
        }
    }

    /// A duration in `min_ms..=max_ms`, spelled one of the many ways humans write it.
    fn duration(&mut self, min_ms: u64, max_ms: Option<u64>, name: &str) -> String {
        let mut max_ms = max_ms.unwrap_or(30 * 86_400_000);
        if name == "wait" {
            max_ms = max_ms.min(WAIT_CAP_MS);
        }
        let ms = match self.rng.random_range(0..4) {
            0 => min_ms,
            1 => max_ms,
            _ => self.rng.random_range(min_ms..=max_ms),
        };
        const UNITS: [(u64, &[&str]); 5] = [
            (86_400_000, &["d", "day", "days"]),
            (3_600_000, &["h", "hr", "hrs", "hour", "hours"]),
            (60_000, &["m", "min", "mins", "minute", "minutes"]),
            (1000, &["s", "sec", "secs", "second", "seconds"]),
            (1, &["ms", "msec", "millis"]),
        ];
        if ms == 0 || self.rng.random_bool(0.25) {
            // One number: in the largest unit that divides it, or in ns or us.
            let (unit, names) = UNITS.iter().find(|(unit, _)| ms % unit == 0).unwrap();
            return match self.rng.random_range(0..4) {
                0 => format!("{}us", ms * 1000),
                1 => format!("{}ns", ms * 1_000_000),
                _ => format!("{}{}", ms / unit, names.choose(&mut self.rng).unwrap()),
            };
        }
        let mut rest = ms;
        let mut parts = Vec::new();
        for (unit, names) in UNITS {
            let n = rest / unit;
            rest %= unit;
            if n > 0 || self.rng.random_bool(0.05) {
                parts.push(format!("{n}{}", names.choose(&mut self.rng).unwrap()));
            }
        }
        let separator = if self.rng.random() { " " } else { "" };
        parts.join(separator)
    }

    fn integer(&mut self, schema: &Value) -> Value {
        let bound = |key: &str| {
            let v = &schema[key];
            v.as_i64()
                .map(i128::from)
                .or_else(|| v.as_u64().map(i128::from))
                .or_else(|| v.as_f64().map(|f| f as i128))
        };
        let (low, high) = match schema["format"].as_str() {
            Some("int32") => (i128::from(i32::MIN), i128::from(i32::MAX)),
            _ => (i128::from(i64::MIN), i128::from(u64::MAX)),
        };
        let min = bound("minimum").unwrap_or(low);
        let max = bound("maximum").unwrap_or(high);
        let n = match self.rng.random_range(0..6) {
            0 => min,
            1 => max,
            2 | 3 => self.rng.random_range(min..=max.min(min + 100)),
            _ => self.rng.random_range(min..=max),
        };
        match i64::try_from(n) {
            Ok(n) => json!(n),
            Err(_) => json!(u64::try_from(n).unwrap()),
        }
    }

    fn array(&mut self, schema: &'a Value, name: &str) -> Value {
        let min = schema["minItems"].as_u64().map_or(0, |n| n as usize);
        let max = schema["maxItems"].as_u64().map(|n| n as usize);
        let len = self.length(min, max, self.open.1);
        let items = &schema["items"];
        let outer = std::mem::replace(&mut self.open, NESTED_OPEN);
        let mut items: Vec<Value> = (0..len).map(|_| self.value(items, name)).collect();
        self.open = outer;
        // `x-unique-items-by`: no two items may have the same value of this field.
        if let Some(field) = schema["x-unique-items-by"].as_str() {
            let mut seen = BTreeSet::new();
            items.retain(|item| seen.insert(item[field].to_string()));
        }
        Value::Array(items)
    }

    fn object(&mut self, schema: &'a Value) -> Value {
        let mut required: BTreeSet<String> = strings(&schema["required"]);
        // Sets of fields that must not all be present.
        let mut forbidden: Vec<BTreeSet<String>> = Vec::new();
        if let Some(branches) = schema["oneOf"].as_array() {
            let chosen = self.rng.random_range(0..branches.len());
            for (i, branch) in branches.iter().enumerate() {
                let set = strings(&branch["required"]);
                if i == chosen {
                    required.extend(set);
                } else {
                    forbidden.push(set);
                }
            }
        }
        if schema["not"].get("required").is_some() {
            forbidden.push(strings(&schema["not"]["required"]));
        }
        let mut object = Map::new();
        if let Some(properties) = schema["properties"].as_object() {
            for (name, property) in properties {
                if required.contains(name) || self.rng.random_bool(0.5) {
                    object.insert(name.clone(), self.value(property, name));
                }
            }
        }
        for set in forbidden {
            if set.iter().all(|name| object.contains_key(name)) {
                let optional = set.iter().find(|name| !required.contains(*name));
                object.remove(optional.expect("the document requires what it forbids"));
            }
        }
        if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            let min = schema["minProperties"].as_u64().map_or(0, |n| n as usize);
            let max = schema["maxProperties"].as_u64().map(|n| n as usize);
            let count = self.length(min, max, self.open.1);
            let outer = std::mem::replace(&mut self.open, NESTED_OPEN);
            let keys = schema.get("propertyNames").unwrap_or(&Value::Null);
            for _ in 0..count * 2 {
                if object.len() >= count {
                    break;
                }
                let key = match keys.is_object() {
                    true => self.string(self.resolve(keys), "key"),
                    false => (0..self.length(0, None, 40))
                        .map(|_| self.any_char())
                        .collect(),
                };
                let value = self.value(values, &key);
                object.insert(key, value);
            }
            self.open = outer;
        }
        Value::Object(object)
    }

    /// A request for one operation: its URL (from `base` and the path template) and body.
    fn request(&mut self, base: &str, path: &str, op: &'a Value) -> (reqwest::Url, Option<Value>) {
        let params = op["parameters"].as_array().map_or(&[][..], Vec::as_slice);
        self.open = URL_OPEN;
        let mut path_values = BTreeMap::new();
        let mut query: Vec<(&'a str, Value)> = Vec::new();
        for param in params {
            let name = param["name"].as_str().unwrap();
            match param["in"].as_str().unwrap() {
                "path" => {
                    let v = self.value(&param["schema"], name);
                    path_values.insert(name.to_owned(), plain(&v));
                }
                "query" if param["required"] == true || self.rng.random_bool(0.5) => {
                    query.push((name, self.value(&param["schema"], name)));
                }
                "query" => {}
                other => panic!("{path}: parameter in {other} is not known to the fuzzer"),
            }
        }
        // A blocking query always says how long it may block.
        let blocking = query.iter().any(|(name, _)| *name == "index");
        if blocking && !query.iter().any(|(name, _)| *name == "wait") {
            if let Some(wait) = params.iter().find(|p| p["name"] == "wait") {
                query.push(("wait", self.value(&wait["schema"], "wait")));
            }
        }
        let mut url = reqwest::Url::parse(base).unwrap();
        {
            let mut segments = url.path_segments_mut().unwrap();
            for segment in path.trim_start_matches('/').split('/') {
                match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => segments.push(&path_values[name]),
                    None => segments.push(segment),
                };
            }
        }
        for (name, value) in &query {
            match value {
                Value::Array(items) => {
                    for item in items {
                        url.query_pairs_mut().append_pair(name, &plain(item));
                    }
                }
                Value::Null => {}
                v => {
                    url.query_pairs_mut().append_pair(name, &plain(v));
                }
            }
        }
        self.open = BODY_OPEN;
        let body = op["requestBody"]["content"]["application/json"]["schema"]
            .as_object()
            .map(|_| {
                self.value(
                    &op["requestBody"]["content"]["application/json"]["schema"],
                    "body",
                )
            });
        (url, body)
    }
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A value as a path segment or query value.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Every lease id in an answer.
fn leases_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("lease", Value::String(id)) if out.len() < 64 => out.push(id.clone()),
                    _ => leases_in(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| leases_in(item, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_document_allows_are_not_refused() {
    // Generated checks name any host the document allows: this server probes none of
    // them, so the test sends nothing beyond loopback.
    let server = common::start(&["--no-probes"]).await;
    let (http, base) = (&server.http, server.base.as_str());
    let doc: Value = match std::env::var("CONTRACT_FUZZ_DOC") {
        Ok(file) => serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap(),
        Err(_) => http
            .get(format!("{base}/v1/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    };
    let seed = std::env::var("CONTRACT_FUZZ_SEED").map_or(SEED, |s| s.parse().unwrap());
    let rounds = std::env::var("CONTRACT_FUZZ_ROUNDS").map_or(ROUNDS, |s| s.parse().unwrap());
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                operations.push((method.to_uppercase(), path.clone(), op));
            }
        }
    }
    let mut gen = Gen::new(seed, &doc);
    let started = Instant::now();
    // (METHOD, path) -> status -> count.
    let mut answers: BTreeMap<(String, String), BTreeMap<u16, usize>> = BTreeMap::new();
    let mut refused = Vec::new();
    for _ in 0..rounds {
        for (method, path, op) in &operations {
            if SKIPPED.iter().any(|(m, p, _)| m == method && p == path) {
                continue;
            }
            let (url, body) = gen.request(base, path, op);
            let mut request = http.request(method.parse().unwrap(), url.clone());
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let code = answer["error"]["code"].as_str().unwrap_or("");
            if status >= 500 || NEVER.contains(&code) {
                let body = body.map_or(String::new(), |b| format!(" {b}"));
                let message = &answer["error"]["message"];
                let mut shown = format!("{status} {code} {message} <- {method} {url}{body}");
                if shown.len() > 600 {
                    let cut = shown
                        .char_indices()
                        .nth(600)
                        .map_or(shown.len(), |(i, _)| i);
                    shown.truncate(cut);
                    shown.push_str("...");
                }
                refused.push(shown);
            } else {
                leases_in(&answer, &mut gen.leases);
            }
            *answers
                .entry((method.clone(), path.clone()))
                .or_default()
                .entry(status)
                .or_default() += 1;
        }
    }
    let sent: usize = answers.values().flat_map(BTreeMap::values).sum();
    eprintln!(
        "contract fuzz, seed {seed}: {sent} requests in {:?}",
        started.elapsed()
    );
    for ((method, path), statuses) in &answers {
        let n: usize = statuses.values().sum();
        eprintln!("  {n:3} {method:6} {path}  {statuses:?}");
    }
    for (method, path, why) in SKIPPED {
        eprintln!("    0 {method:6} {path}  (not sent: {why})");
    }
    assert!(
        refused.is_empty(),
        "{} of {sent} requests the document allows were refused or failed:\n{}",
        refused.len(),
        refused.join("\n")
    );
    assert!(sent >= 300, "only {sent} requests");
    assert_eq!(answers.len() + SKIPPED.len(), operations.len());
    server.shutdown().await;
}
