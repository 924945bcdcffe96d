//! Where the bytes go: the keys and bytes each sled tree of a database holds, for the load tool's report and the
//! retention tests. sled adds its own overhead on top (page headers, the log's old versions until its cleaner reclaims
//! them); comparing [`Footprint::total`] with the files' size shows how much.

/// What one tree holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeFootprint {
    pub name: String,
    pub keys: u64,
    pub key_bytes: u64,
    pub value_bytes: u64,
}

/// What every tree of a database holds, largest first.
#[derive(Clone, Debug, Default)]
pub struct Footprint {
    pub trees: Vec<TreeFootprint>,
}

impl Footprint {
    /// Reads every tree of `db` (a full scan: for tools and tests, not the hot path).
    pub fn of(db: &sled::Db) -> Result<Footprint, sled::Error> {
        let mut trees = Vec::new();
        for name in db.tree_names() {
            let tree = db.open_tree(&name)?;
            let mut t = TreeFootprint { name: String::from_utf8_lossy(&name).into_owned(), ..TreeFootprint::default() };
            for entry in tree.iter() {
                let (k, v) = entry?;
                t.keys += 1;
                t.key_bytes += k.len() as u64;
                t.value_bytes += v.len() as u64;
            }
            trees.push(t);
        }
        trees.sort_by_key(|t| std::cmp::Reverse(t.key_bytes + t.value_bytes));
        Ok(Footprint { trees })
    }

    /// The keys and values of every tree together, in bytes.
    pub fn total(&self) -> u64 {
        self.trees.iter().map(|t| t.key_bytes + t.value_bytes).sum()
    }

    /// The tree called `name`, if the database has it.
    pub fn tree(&self, name: &str) -> Option<&TreeFootprint> {
        self.trees.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_keys_and_bytes_per_tree() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let t = db.open_tree("a").unwrap();
        t.insert(b"k1", vec![0u8; 10]).unwrap();
        t.insert(b"k22", vec![0u8; 5]).unwrap();
        db.open_tree("b").unwrap().insert(b"x", b"y").unwrap();
        let f = Footprint::of(&db).unwrap();
        assert_eq!(f.tree("a"), Some(&TreeFootprint { name: "a".into(), keys: 2, key_bytes: 5, value_bytes: 15 }));
        assert_eq!(f.tree("b").map(|t| t.keys), Some(1));
        assert_eq!(f.trees[0].name, "a", "largest first");
        assert!(f.total() >= 22);
    }
}
