//! The block-map tree against a plain list of references: random changes to a disk big enough
//! for three levels, flushed in rounds; after every round the stored tree loads back equal to
//! the list, every stored node is reachable, and a flat map from an older record loads the same.

use std::collections::HashSet;

use bytes::Bytes;
use ferry_format::map::{self, ChunkRef, FANOUT, FLAT_PAGE_ENTRIES, LEAF_ENTRIES};
use ferry_format::point::{DiskMap, MapRoot};
use ferry_format::{BLOCK_SIZE, Digest};
use ferry_replica::{ReplicaLayout, tree};
use ferry_storage::{DynStore, StoreError};
use ferry_types::StreamId;
use proptest::prelude::*;

/// Two index levels above the leaves, the last leaf and the last index node partly filled.
const BLOCKS: u64 = (LEAF_ENTRIES * FANOUT) as u64 + 3 * LEAF_ENTRIES as u64 + 5;

fn layout() -> ReplicaLayout {
    let mem = || -> DynStore { ferry_storage::open("memory://").unwrap() };
    ReplicaLayout::new(StreamId([7; 16]), mem(), vec![mem()])
}

fn chunk(seed: u64) -> ChunkRef {
    ChunkRef {
        hash: Digest(*blake3::hash(&seed.to_le_bytes()).as_bytes()),
        pack: seed % 5,
        offset: seed as u32,
        len: 100,
    }
}

async fn store(layout: &ReplicaLayout, nodes: Vec<(Digest, Vec<u8>)>) {
    for (digest, bytes) in nodes {
        match layout.disks[0]
            .put_new(&layout.page_key(0, &digest), Bytes::from(bytes))
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => panic!("store node: {e}"),
        }
    }
}

fn disk_map(root: Digest) -> DiskMap {
    DiskMap {
        size: BLOCKS * BLOCK_SIZE,
        map: MapRoot::Tree(root),
    }
}

/// A round of changes: `(block, Some(seed))` maps a chunk, `(block, None)` zeroes the block.
fn rounds() -> impl Strategy<Value = Vec<Vec<(u64, Option<u64>)>>> {
    let change = (0..BLOCKS, proptest::option::weighted(0.8, any::<u64>()));
    proptest::collection::vec(proptest::collection::vec(change, 0..300), 1..6)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_tree_loads_back_as_the_references_it_was_built_from(rounds in rounds()) {
        rt().block_on(async {
            let layout = layout();
            let mut model = vec![ChunkRef::ZERO; BLOCKS as usize];
            let mut tree = tree::MapTree::empty(BLOCKS);
            prop_assert_eq!(map::tree_shape(BLOCKS).len(), 3);
            for round in rounds {
                for (block, seed) in round {
                    model[block as usize] = seed.map_or(ChunkRef::ZERO, chunk);
                    tree.mark(block);
                }
                let nodes = tree.encode(&model).unwrap();
                store(&layout, nodes).await;
                let dm = disk_map(tree.root());
                let (loaded, again) = tree::load(&layout, 0, &dm).await.unwrap();
                prop_assert!(loaded == model, "the loaded map differs from the model");
                prop_assert_eq!(again.root(), tree.root());
                prop_assert!(!again.is_dirty());

                // Every node the tree holds is reachable from the root, and nothing else is.
                let mut seen = HashSet::new();
                let mut mapped = 0;
                tree::walk(&layout, 0, &dm, &mut seen, |e| {
                    mapped += e.iter().filter(|r| !r.is_zero()).count();
                })
                .await
                .unwrap();
                let held: HashSet<Digest> = tree.nodes().collect();
                prop_assert_eq!(seen, held);
                prop_assert_eq!(mapped, model.iter().filter(|r| !r.is_zero()).count());
                let all_zero = model.iter().all(ChunkRef::is_zero);
                prop_assert_eq!(tree.root() == Digest::ZERO, all_zero);
            }
            Ok(())
        })?;
    }
}

#[test]
fn a_point_changing_one_block_stores_one_node_per_level() {
    rt().block_on(async {
        let mut model: Vec<ChunkRef> = (0..BLOCKS).map(chunk).collect();
        let mut tree = tree::MapTree::empty(BLOCKS);
        for b in 0..BLOCKS {
            tree.mark(b);
        }
        tree.encode(&model).unwrap();
        model[4242] = chunk(u64::MAX);
        tree.mark(4242);
        let nodes = tree.encode(&model).unwrap();
        assert_eq!(nodes.len(), map::tree_shape(BLOCKS).len());
        let leaf_bytes = nodes[0].1.len();
        assert!(leaf_bytes < LEAF_ENTRIES * 48, "{leaf_bytes}");
    });
}

#[test]
fn a_flat_map_from_an_older_record_loads_and_is_rewritten_as_a_tree() {
    rt().block_on(async {
        let layout = layout();
        let model: Vec<ChunkRef> = (0..BLOCKS)
            .map(|b| if b % 7 == 0 { chunk(b) } else { ChunkRef::ZERO })
            .collect();
        let mut pages = Vec::new();
        for page in model.chunks(FLAT_PAGE_ENTRIES) {
            let (bytes, digest) = map::encode_leaf(page).unwrap();
            store(&layout, vec![(digest, bytes)]).await;
            pages.push(digest);
        }
        let flat = DiskMap {
            size: BLOCKS * BLOCK_SIZE,
            map: MapRoot::Pages(pages.clone()),
        };
        let (loaded, mut tree) = tree::load(&layout, 0, &flat).await.unwrap();
        assert!(loaded == model);
        assert!(tree.is_dirty(), "a flat map must be written as a tree");
        store(&layout, tree.encode(&loaded).unwrap()).await;
        let (again, _) = tree::load(&layout, 0, &disk_map(tree.root()))
            .await
            .unwrap();
        assert!(again == model);

        // A record naming too few pages is refused, not read short.
        pages.pop();
        let short = DiskMap {
            size: BLOCKS * BLOCK_SIZE,
            map: MapRoot::Pages(pages),
        };
        let err = tree::load(&layout, 0, &short).await.unwrap_err();
        assert!(err.to_string().contains("map pages"), "{err}");
    });
}

#[test]
fn a_node_in_the_wrong_place_is_refused() {
    rt().block_on(async {
        let layout = layout();
        let model: Vec<ChunkRef> = (0..BLOCKS).map(chunk).collect();
        let mut tree = tree::MapTree::empty(BLOCKS);
        for b in 0..BLOCKS {
            tree.mark(b);
        }
        store(&layout, tree.encode(&model).unwrap()).await;
        // A leaf named as the root of a three-level tree.
        let (bytes, leaf) = map::encode_leaf(&model[..LEAF_ENTRIES]).unwrap();
        store(&layout, vec![(leaf, bytes)]).await;
        let err = tree::load(&layout, 0, &disk_map(leaf)).await.unwrap_err();
        assert!(err.to_string().contains("misplaced"), "{err}");
    });
}
