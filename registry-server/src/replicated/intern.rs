//! Shared strings for the catalog: a million instances repeat a few thousand service
//! names, tags, zones and meta pairs, so each distinct one is stored once and every
//! instance holds a pointer to it.
//!
//! [`Name`] is an `Arc<str>`; an instance's tags and meta are whole shared lists
//! ([`Tags`], [`Meta`]: instances of one service nearly always carry the same ones, so
//! the list itself is shared, not just its strings). They serialize exactly as the
//! `String`, `Vec<String>` and `BTreeMap<String, String>` they replace, so neither the
//! log nor snapshots changed. The [`Interner`] is a node's own memory, not replicated
//! state: what it holds never changes an answer, only how many copies of a string exist.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

/// A shared string.
pub type Name = Arc<str>;

/// An instance's tags, in the order it registered them.
pub type Tags = List<Name>;

/// An instance's meta pairs, sorted by key with no key twice (a compact map: at most
/// [`api_spec::rules`]' few dozen pairs, searched by bisection).
pub type Meta = List<(Name, Name)>;

/// A shared, immutable list behind one thin pointer: 8 bytes in the record where an
/// `Arc<[T]>` takes 16 (pointer and length). Two of them per instance record are what
/// keep the record's allocation in jemalloc's 160-byte size class instead of 192. The
/// length lives beside the items, one hop further, in the one copy all instances share.
/// Compares, hashes and serializes as the slice it holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct List<T>(Arc<Box<[T]>>);

impl<T> List<T> {
    /// Whether `a` and `b` are the same shared copy.
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// How many holders the shared copy has.
    fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

impl<T> Default for List<T> {
    fn default() -> Self {
        Self(Arc::new(Box::default()))
    }
}

impl<T> std::ops::Deref for List<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T> std::borrow::Borrow<[T]> for List<T> {
    fn borrow(&self) -> &[T] {
        &self.0
    }
}

impl<T> From<Vec<T>> for List<T> {
    fn from(items: Vec<T>) -> Self {
        Self(Arc::new(items.into_boxed_slice()))
    }
}

impl<T> FromIterator<T> for List<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        items.into_iter().collect::<Vec<T>>().into()
    }
}

impl<T: serde::Serialize> serde::Serialize for List<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(d).map(Self::from)
    }
}

/// Builds a [`Meta`] from pairs in any order; a key given twice keeps its last value.
pub fn meta<K: Into<Name>, V: Into<Name>>(pairs: impl IntoIterator<Item = (K, V)>) -> Meta {
    let mut pairs: Vec<(Name, Name)> = pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    // Stable: equal keys keep their order, so the last one given is the last kept.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut deduped: Vec<(Name, Name)> = Vec::with_capacity(pairs.len());
    for pair in pairs {
        match deduped.last_mut() {
            Some(last) if last.0 == pair.0 => *last = pair,
            _ => deduped.push(pair),
        }
    }
    deduped.into()
}

/// The value of `key` in `meta`.
pub fn meta_get<'a>(meta: &'a [(Name, Name)], key: &str) -> Option<&'a str> {
    meta.binary_search_by(|(k, _)| (**k).cmp(key))
        .ok()
        .map(|at| &*meta[at].1)
}

/// Where an instance runs: its zone and region, as one shared value (a cluster names a
/// handful of places, and a pointer is cheaper than two optional names per instance).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Place(Option<Arc<(Option<Name>, Option<Name>)>>);

impl Place {
    pub fn new(zone: Option<Name>, region: Option<Name>) -> Self {
        match (zone, region) {
            (None, None) => Self(None),
            both => Self(Some(Arc::new(both))),
        }
    }

    pub fn zone(&self) -> Option<&Name> {
        self.0.as_ref()?.0.as_ref()
    }

    pub fn region(&self) -> Option<&Name> {
        self.0.as_ref()?.1.as_ref()
    }
}

/// Builds [`Tags`] from strings.
pub fn tags<T: Into<Name>>(tags: impl IntoIterator<Item = T>) -> Tags {
    tags.into_iter().map(Into::into).collect()
}

/// The distinct strings and lists in use. Cloning one gives an empty table (a clone of
/// the state is made to be encoded, not to intern more), which keeps that clone O(1).
#[derive(Debug, Default)]
pub struct Interner {
    names: HashSet<Name>,
    tags: HashSet<Tags>,
    metas: HashSet<Meta>,
    places: HashSet<Arc<(Option<Name>, Option<Name>)>>,
    /// Entries added since the last purge; a purge runs once they outnumber what was
    /// kept then, so its cost is spread over the additions (amortised O(1)).
    added: usize,
    kept: usize,
}

impl Clone for Interner {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// Every table is equal: interning changes memory, never meaning.
impl PartialEq for Interner {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Interner {}

impl Interner {
    /// The shared copy of `name`.
    pub fn name(&mut self, name: &Name) -> Name {
        if let Some(shared) = self.names.get(&**name) {
            return shared.clone();
        }
        self.added += 1;
        self.names.insert(name.clone());
        name.clone()
    }

    /// The shared copy of an optional name.
    pub fn opt(&mut self, name: &Option<Name>) -> Option<Name> {
        name.as_ref().map(|n| self.name(n))
    }

    /// The shared copy of a tag list (its tags shared too).
    pub fn tags(&mut self, tags: &Tags) -> Tags {
        // A list compares by its strings' contents, so an unshared one finds its twin.
        if let Some(shared) = self.tags.get(&**tags) {
            return shared.clone();
        }
        let shared: Tags = tags.iter().map(|t| self.name(t)).collect();
        self.added += 1;
        self.tags.insert(shared.clone());
        shared
    }

    /// The shared copy of a meta list (its keys and values shared too).
    pub fn meta(&mut self, meta: &Meta) -> Meta {
        if let Some(shared) = self.metas.get(&**meta) {
            return shared.clone();
        }
        let shared: Meta = meta
            .iter()
            .map(|(k, v)| (self.name(k), self.name(v)))
            .collect();
        self.added += 1;
        self.metas.insert(shared.clone());
        shared
    }

    /// The shared copy of a place (its names shared too).
    pub fn place(&mut self, place: &Place) -> Place {
        let Some(both) = &place.0 else {
            return Place(None);
        };
        if let Some(shared) = self.places.get(both) {
            return Place(Some(shared.clone()));
        }
        let shared = Arc::new((self.opt(&both.0), self.opt(&both.1)));
        self.added += 1;
        self.places.insert(shared.clone());
        Place(Some(shared))
    }

    /// Drops what nothing but the table holds any more, once enough was added since the
    /// last time. Lists go first: they hold names.
    pub fn maybe_purge(&mut self) {
        if self.added <= self.kept.max(1024) {
            return;
        }
        self.tags.retain(|t| t.holders() > 1);
        self.metas.retain(|m| m.holders() > 1);
        self.places.retain(|p| Arc::strong_count(p) > 1);
        self.names.retain(|n| Arc::strong_count(n) > 1);
        self.kept = self.len();
        self.added = 0;
    }

    /// Distinct names and lists held.
    pub fn len(&self) -> usize {
        self.names.len() + self.tags.len() + self.metas.len() + self.places.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

thread_local! {
    /// The table strings are shared through while a snapshot is decoded on this thread
    /// ([`decoding`]); `None` otherwise (a log entry's strings are shared when applied).
    static DECODING: RefCell<Option<Interner>> = const { RefCell::new(None) };
}

/// Runs `decode` with the fields marked `deserialize_with = "intern::decode::…"` shared
/// as they are decoded, so a decoded catalog never holds a copy per instance; returns
/// what it decoded and the table, for the catalog to keep.
pub fn decoding<T>(decode: impl FnOnce() -> T) -> (T, Interner) {
    DECODING.with(|d| *d.borrow_mut() = Some(Interner::default()));
    let decoded = decode();
    let interner = DECODING.with(|d| d.borrow_mut().take()).unwrap_or_default();
    (decoded, interner)
}

/// `deserialize_with` functions: decode, then share through the [`decoding`] table.
pub mod decode {
    use super::*;

    fn shared<T>(value: T, share: impl FnOnce(&mut Interner, &T) -> T) -> T {
        DECODING.with(|d| match d.borrow_mut().as_mut() {
            Some(interner) => share(interner, &value),
            None => value,
        })
    }

    pub fn tags<'de, D: Deserializer<'de>>(d: D) -> Result<Tags, D::Error> {
        Ok(shared(Tags::deserialize(d)?, Interner::tags))
    }

    pub fn meta<'de, D: Deserializer<'de>>(d: D) -> Result<Meta, D::Error> {
        Ok(shared(Meta::deserialize(d)?, Interner::meta))
    }

    /// The place of a decoded zone and region (not a field of its own: see
    /// [`crate::replicated::catalog::InstanceSpec`]'s stored form).
    pub fn place(zone: Option<Name>, region: Option<Name>) -> Place {
        shared(Place::new(zone, region), Interner::place)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_and_lists_become_one_allocation() {
        let mut i = Interner::default();
        let a = i.tags(&tags(["v1", "primary"]));
        let b = i.tags(&tags(["v1", "primary"]));
        assert!(List::ptr_eq(&a, &b));
        let c = i.tags(&tags(["primary", "v2"]));
        // The tag inside another list is the same string too.
        assert!(Arc::ptr_eq(&a[1], &c[0]));
        let m1 = i.meta(&meta([("version", "1.4"), ("az", "a")]));
        let m2 = i.meta(&meta([("az", "a"), ("version", "1.4")]));
        assert!(List::ptr_eq(&m1, &m2));
        let zone = i.name(&Name::from("zone-a"));
        assert!(Arc::ptr_eq(&zone, &i.name(&Name::from("zone-a"))));
        let p1 = i.place(&Place::new(Some("zone-a".into()), Some("eu".into())));
        let p2 = i.place(&Place::new(Some("zone-a".into()), Some("eu".into())));
        assert!(Arc::ptr_eq(p1.0.as_ref().unwrap(), p2.0.as_ref().unwrap()));
        assert!(Arc::ptr_eq(p1.zone().unwrap(), &zone));
        assert_eq!(i.place(&Place::new(None, None)), Place::default());
    }

    #[test]
    fn meta_is_sorted_without_duplicate_keys_and_found_by_key() {
        let m = meta([("b", "2"), ("a", "1"), ("b", "3")]);
        assert_eq!(
            m.iter().map(|(k, v)| (&**k, &**v)).collect::<Vec<_>>(),
            [("a", "1"), ("b", "3")]
        );
        assert_eq!(meta_get(&m, "b"), Some("3"));
        assert_eq!(meta_get(&m, "c"), None);
    }

    #[test]
    fn what_only_the_table_holds_is_purged() {
        let mut i = Interner::default();
        let kept = i.tags(&tags(["kept"]));
        for n in 0..2000 {
            i.name(&Name::from(format!("gone-{n}")));
        }
        i.maybe_purge();
        // The kept list and its tag remain; the 2000 unused names went.
        assert_eq!(i.len(), 2);
        assert!(List::ptr_eq(&kept, &i.tags(&tags(["kept"]))));
    }

    #[test]
    fn shared_values_serialize_as_the_plain_types_they_replace() {
        let t = tags(["a", "b"]);
        let m = meta([("k", "v")]);
        let plain_t: Vec<String> = vec!["a".into(), "b".into()];
        let plain_m = std::collections::BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        assert_eq!(
            bincode::serialize(&t).unwrap(),
            bincode::serialize(&plain_t).unwrap()
        );
        // bincode writes a map as its length and pairs: the same as a list of pairs.
        assert_eq!(
            bincode::serialize(&m).unwrap(),
            bincode::serialize(&plain_m).unwrap()
        );
        let back: Meta = bincode::deserialize(&bincode::serialize(&plain_m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
}
