//! Header edits from VirtualService `headers` (route and destination level).

use http::{HeaderMap, HeaderName, HeaderValue};

#[derive(Debug, Default, Clone)]
pub struct HeaderEdits {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Envoy's order: remove, then set (overwrite), then add (append).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    pub request: HeaderEdits,
    pub response: HeaderEdits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_then_set_then_add() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        h.append("x-multi", HeaderValue::from_static("1"));
        let edits = HeaderEdits {
            set: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("new"),
            )],
            add: vec![(
                HeaderName::from_static("x-multi"),
                HeaderValue::from_static("2"),
            )],
            remove: vec![HeaderName::from_static("x-gone")],
        };
        edits.apply(&mut h);
        assert_eq!(h["x-a"], "new");
        assert!(h.get("x-gone").is_none());
        let multi: Vec<_> = h.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["1", "2"]);
    }
}
