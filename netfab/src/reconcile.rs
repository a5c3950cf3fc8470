//! Reconcile strategy: compute the difference between what a map (or any
//! keyed kernel table) should hold and what it holds, as pure data, then apply
//! it make-before-break: upserts first, removals last, so a restarted agent
//! reconciling an already-correct table changes nothing and drops nothing.
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff<K, V> {
    /// Entries that are missing or hold another value.
    pub upserts: Vec<(K, V)>,
    /// Entries present but not wanted.
    pub removals: Vec<K>,
}

impl<K, V> Diff<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    desired: &BTreeMap<K, V>,
    actual: &BTreeMap<K, V>,
) -> Diff<K, V> {
    let upserts = desired
        .iter()
        .filter(|(k, v)| actual.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let removals = actual
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .cloned()
        .collect();
    Diff { upserts, removals }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(u32, &str)]) -> BTreeMap<u32, String> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn equal_tables_need_nothing() {
        let t = m(&[(1, "a"), (2, "b")]);
        assert!(diff(&t, &t).is_empty());
    }

    #[test]
    fn adds_changes_and_removes() {
        let d = diff(
            &m(&[(1, "a"), (2, "B"), (4, "d")]),
            &m(&[(1, "a"), (2, "b"), (3, "c")]),
        );
        assert_eq!(d.upserts, vec![(2, "B".to_string()), (4, "d".to_string())]);
        assert_eq!(d.removals, vec![3]);
    }

    #[test]
    fn empty_desired_removes_all() {
        let d = diff(&m(&[]), &m(&[(1, "a"), (2, "b")]));
        assert!(d.upserts.is_empty());
        assert_eq!(d.removals, vec![1, 2]);
    }
}
