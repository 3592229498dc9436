//! Capability lookup: directed cases for each failure, then a property
//! test against a model that resolves a pointer as a string of bits
//! (guard bits compared, index bits read, the rest passed on) with no
//! shifting or masking to get wrong.

mod common;

use abi::{CPtr, CapRights, Depth, LookupFailure, ObjectType};
use common::*;
use cspace::*;
use proptest::prelude::*;

fn depth(bits: u8) -> Depth {
    Depth::new(bits as u64).expect("depth")
}

fn cnode(n: u32, radix_bits: u8, guard: u64, guard_bits: u8) -> Cap {
    Cap::CNode {
        id: id(n),
        radix_bits,
        guard,
        guard_bits,
    }
}

#[test]
fn a_single_level_root_resolves_a_slot_index_at_depth_64() {
    let space = boot();
    let root = root_cap();
    assert_eq!(space.resolve(&root, CPtr(7), Depth::WORD), Ok(at(ROOT, 7)));
    assert_eq!(
        space
            .lookup(&root, CPtr(7))
            .map(|(_, cap)| cap.object_type()),
        Ok(Some(ObjectType::Endpoint))
    );
    assert_eq!(
        space.lookup(&root, CPtr(9)),
        Err(LookupFailure::MissingCapability { bits_left: 0 })
    );
    // Bits above the depth are ignored; bits within the guard are not.
    assert_eq!(
        space.resolve(&root, CPtr(1 << 60 | 7), Depth::WORD),
        Err(LookupFailure::GuardMismatch {
            bits_left: 64,
            guard_found: 0,
            guard_bits: 60,
        })
    );
    let root = cnode(ROOT, ROOT_RADIX, 0, 0);
    assert_eq!(
        space.resolve(&root, CPtr(0xfff7), depth(4)),
        Ok(at(ROOT, 7))
    );
}

#[test]
fn each_failure_is_typed() {
    let space = boot();
    assert_eq!(
        space.resolve(&Cap::Untyped { id: id(2) }, CPtr(0), Depth::WORD),
        Err(LookupFailure::InvalidRoot)
    );
    assert_eq!(
        space.resolve(&Cap::Null, CPtr(0), Depth::WORD),
        Err(LookupFailure::InvalidRoot)
    );
    // Fewer bits than the guard.
    assert_eq!(
        space.resolve(&root_cap(), CPtr(7), depth(20)),
        Err(LookupFailure::GuardMismatch {
            bits_left: 20,
            guard_found: 0,
            guard_bits: 60
        })
    );
    // Guard fits, radix does not.
    let root = cnode(ROOT, ROOT_RADIX, 0b1, 1);
    assert_eq!(
        space.resolve(&root, CPtr(0b1_011), depth(4)),
        Err(LookupFailure::DepthMismatch {
            bits_resolved: 5,
            bits_left: 4
        })
    );
    // Bits left at a slot with no CNode cap: empty, or another cap.
    let root = cnode(ROOT, ROOT_RADIX, 0, 0);
    assert_eq!(
        space.resolve(&root, CPtr(0x9_3), depth(8)),
        Err(LookupFailure::MissingCapability { bits_left: 4 })
    );
    assert_eq!(
        space.resolve(&root, CPtr(0x7_3), depth(8)),
        Err(LookupFailure::DepthMismatch {
            bits_resolved: 0,
            bits_left: 4
        })
    );
    assert_eq!(
        space.resolve_partial(&root, CPtr(0x7_3), depth(8)),
        Ok((at(ROOT, 7), 4))
    );
    // Depth 0 resolves nothing.
    assert_eq!(
        space.resolve(&root, CPtr(0), depth(0)),
        Err(LookupFailure::DepthMismatch {
            bits_resolved: 4,
            bits_left: 0
        })
    );
}

#[test]
fn two_levels_and_a_cnode_that_holds_itself() {
    let mut space = boot();
    // A CNode of radix 2 (object 4) in slot 8, reached with guard 0b10.
    let child = cnode(4, 2, 0, 0);
    space
        .insert_child(at(ROOT, UNTYPED), at(ROOT, 8), child, Some(slots(2)))
        .expect("retype");
    space
        .mint(
            at(ROOT, 8),
            at(ROOT, 9),
            CapRights::all(),
            CapData {
                word: 0b10 << 6 | 2,
                index: 5,
            },
        )
        .expect("mint");
    space
        .copy(at(ROOT, ENDPOINT), at(4, 3), CapRights::all())
        .expect("copy");
    let root = cnode(ROOT, ROOT_RADIX, 0, 0);
    // 4 bits of index 9, then guard 0b10, then index 3.
    let cptr = CPtr(0x9 << 4 | 0b10 << 2 | 3);
    assert_eq!(space.resolve(&root, cptr, depth(8)), Ok(at(4, 3)));
    assert_eq!(
        space.lookup(&root_cap(), CPtr(9)).map(|(at, _)| at),
        Ok(at(ROOT, 9))
    );
    // Slot 9 holds a CNode cap, so depth 64 goes on into it: the guard
    // must match then. From a root without guard, the extra bits fail it.
    assert_eq!(
        space.resolve(&root, CPtr(0x9 << 4 | 0b01 << 2 | 3), depth(8)),
        Err(LookupFailure::GuardMismatch {
            bits_left: 4,
            guard_found: 0b10,
            guard_bits: 2
        })
    );
    // A CNode holding a cap to itself: every level eats 2 bits, so 64
    // bits end after 32 levels.
    space
        .copy(at(ROOT, 8), at(4, 0), CapRights::all())
        .expect("self cap");
    assert_eq!(
        space.resolve_partial(&child, CPtr(0), Depth::WORD),
        Ok((at(4, 0), 0))
    );
    assert_eq!(
        space.lookup(&child, CPtr(0)).map(|(at, _)| at),
        Ok(at(4, 0))
    );
}

// ---- the model ----

/// The low `depth` bits of `cptr`, most significant first.
fn bit_string(cptr: u64, depth: u8) -> Vec<bool> {
    (0..depth).rev().map(|i| cptr >> i & 1 == 1).collect()
}

fn number(bits: &[bool]) -> u64 {
    bits.iter().fold(0, |n, &bit| n << 1 | u64::from(bit))
}

/// Resolution as the definition says it.
fn model(space: &Space, node: &Cap, bits: &[bool]) -> Result<(SlotRef, u8), LookupFailure> {
    let Cap::CNode {
        id,
        radix_bits,
        guard,
        guard_bits,
    } = *node
    else {
        return Err(LookupFailure::InvalidRoot);
    };
    let (radix, guard_len) = (radix_bits as usize, guard_bits as usize);
    let left = bits.len() as u8;
    if guard_len > bits.len() || number(&bits[..guard_len]) != guard {
        return Err(LookupFailure::GuardMismatch {
            bits_left: left,
            guard_found: guard,
            guard_bits,
        });
    }
    if guard_len + radix > bits.len() {
        return Err(LookupFailure::DepthMismatch {
            bits_resolved: (guard_len + radix) as u8,
            bits_left: left,
        });
    }
    let slot = SlotRef::new(id, number(&bits[guard_len..guard_len + radix]) as u32);
    let rest = &bits[guard_len + radix..];
    match space.cap(slot) {
        Some(next @ Cap::CNode { .. }) if !rest.is_empty() => model(space, &next, rest),
        _ => Ok((slot, rest.len() as u8)),
    }
}

#[derive(Clone, Debug)]
enum Fill {
    Empty,
    Endpoint,
    /// A cap to CNode `n % count`, with this guard.
    CNode(usize, u8, u64),
}

/// Guards of zeros half the time, so that small pointers pass them.
fn guard() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), any::<u64>()]
}

fn fill() -> impl Strategy<Value = Fill> {
    prop_oneof![
        2 => Just(Fill::Empty),
        1 => Just(Fill::Endpoint),
        4 => (any::<usize>(), 0u8..4, guard()).prop_map(|(n, bits, guard)| Fill::CNode(n, bits, guard)),
    ]
}

/// CNodes 0..radices.len() with the given radices, each holding a cap to
/// itself in slot 0, the other slots filled from `fills`.
fn build(radices: &[u8], fills: &[Fill]) -> Space {
    let mut space = empty_space();
    let count = radices.len() as u32;
    for (n, &radix) in radices.iter().enumerate() {
        let n = n as u32;
        space
            .insert_original(at(n, 0), cnode(n, radix, 0, 0), Some(slots(radix)))
            .expect("CNode");
    }
    let mut next_id = count;
    let mut fills = fills.iter().cycle();
    for (n, &radix) in radices.iter().enumerate() {
        for index in 1..1u32 << radix {
            let dest = at(n as u32, index);
            match fills.next().expect("cycle") {
                Fill::Empty => {}
                Fill::Endpoint => {
                    let cap = Cap::original(ObjectType::Endpoint, id(next_id), 0, false);
                    space.insert_original(dest, cap, None).expect("endpoint");
                    next_id += 1;
                }
                &Fill::CNode(target, bits, guard) => {
                    let guard = guard & ((1 << bits) - 1);
                    let word = guard << 6 | bits as u64;
                    let src = at(target as u32 % count, 0);
                    space
                        .mint(src, dest, CapRights::all(), CapData { word, index: 5 })
                        .expect("mint");
                }
            }
        }
    }
    space.check().expect("consistent");
    space
}

fn proptest_config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config(256))]

    #[test]
    fn resolution_matches_the_model(
        radices in prop::collection::vec(1u8..4, 1..4),
        fills in prop::collection::vec(fill(), 1..32),
        root_target in any::<usize>(),
        root_guard_bits in 0u8..4,
        root_guard in guard(),
        root_is_cnode in prop::bool::weighted(0.95),
        lookups in prop::collection::vec(
            (prop_oneof![any::<u64>(), 0u64..4096], prop_oneof![4 => 0u8..16, 1 => 0u8..=64]), 32),
    ) {
        let space = build(&radices, &fills);
        let target = (root_target % radices.len()) as u32;
        let root = if root_is_cnode {
            cnode(target, radices[target as usize], root_guard & ((1 << root_guard_bits) - 1), root_guard_bits)
        } else {
            Cap::Tcb { id: id(target) }
        };
        for (cptr, bits) in lookups {
            let expected = model(&space, &root, &bit_string(cptr, bits));
            prop_assert_eq!(space.resolve_partial(&root, CPtr(cptr), depth(bits)), expected);
            let exact = expected.and_then(|(at, left)| match (left, space.cap(at)) {
                (0, _) => Ok(at),
                (left, Some(Cap::Null)) => Err(LookupFailure::MissingCapability { bits_left: left }),
                (left, _) => Err(LookupFailure::DepthMismatch { bits_resolved: 0, bits_left: left }),
            });
            prop_assert_eq!(space.resolve(&root, CPtr(cptr), depth(bits)), exact);
            let word = model(&space, &root, &bit_string(cptr, 64));
            let looked_up = word.and_then(|(at, left)| match space.cap(at) {
                Some(Cap::Null) | None => Err(LookupFailure::MissingCapability { bits_left: left }),
                Some(cap) => Ok((at, cap)),
            });
            prop_assert_eq!(space.lookup(&root, CPtr(cptr)), looked_up);
        }
    }
}
