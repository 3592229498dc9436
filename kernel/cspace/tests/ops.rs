//! One test per operation and per error: what each does to caps, the
//! derivation tree and object lifetimes, and that a refused operation
//! changes nothing.

mod common;

use abi::{CPtr, CapRights, Depth, Error, GuardData, InvocationLabel, LookupFailure, ObjectType};
use common::*;
use cspace::*;

const R: u32 = ROOT;

/// Retypes a new object of type `ty` as object `n` from the Untyped cap
/// in `parent` into `dest`.
fn retype(space: &mut Space, parent: SlotRef, dest: SlotRef, ty: ObjectType, n: u32) {
    let radix = 2;
    let memory = matches!(ty, ObjectType::CNode).then(|| slots(radix));
    let cap = Cap::original(ty, id(n), radix, false);
    space
        .insert_child(parent, dest, cap, memory)
        .expect("retype");
}

/// Runs `op`, which must fail with `error` and change nothing.
fn refused<T: std::fmt::Debug>(
    space: &mut Space,
    error: Error,
    op: impl FnOnce(&mut Space) -> Result<T, Error>,
) {
    let before = snapshot(space);
    assert_eq!(op(space).map(|_| ()), Err(error));
    assert_eq!(
        snapshot(space),
        before,
        "a refused operation changed the CSpace"
    );
    space.check().expect("consistent");
}

fn mapping(vaddr: u64) -> Mapping {
    Mapping {
        vspace: id(1),
        vaddr,
    }
}

// ---- copy ----

#[test]
fn copy_makes_a_child_with_the_same_badge_and_cut_rights() {
    let mut space = boot();
    space
        .mint(
            at(R, ENDPOINT),
            at(R, 8),
            ALL,
            CapData { word: 42, index: 5 },
        )
        .expect("mint");
    space
        .copy(at(R, 8), at(R, 9), CapRights::READ | CapRights::GRANT)
        .expect("copy");
    assert_eq!(
        space.cap(at(R, 9)),
        Some(Cap::Endpoint {
            id: id(3),
            badge: 42,
            rights: CapRights::READ | CapRights::GRANT
        })
    );
    assert_eq!(space.parent(at(R, 9)), Some(at(R, 8)));
    assert_eq!(space.children(at(R, 8)).collect::<Vec<_>>(), [at(R, 9)]);
    assert_eq!(space.cap_count(id(3)), 3);
    // Rights never grow back.
    space.copy(at(R, 9), at(R, 10), ALL).expect("copy");
    assert_eq!(
        space.cap(at(R, 10)).and_then(|c| c.rights()),
        Some(CapRights::READ | CapRights::GRANT)
    );
    space.check().expect("consistent");
}

#[test]
fn copy_refuses_a_full_destination_an_empty_source_and_no_slot() {
    let mut space = boot();
    refused(&mut space, Error::DeleteFirst, |s| {
        s.copy(at(R, ENDPOINT), at(R, UNTYPED), ALL)
    });
    // Into itself: the destination is not empty.
    refused(&mut space, Error::DeleteFirst, |s| {
        s.copy(at(R, ENDPOINT), at(R, ENDPOINT), ALL)
    });
    let missing = Error::FailedLookup {
        source: true,
        failure: LookupFailure::MissingCapability { bits_left: 0 },
    };
    refused(&mut space, missing, |s| s.copy(at(R, 9), at(R, 10), ALL));
    let no_dest = Error::FailedLookup {
        source: false,
        failure: LookupFailure::InvalidRoot,
    };
    refused(&mut space, no_dest, |s| {
        s.copy(at(R, ENDPOINT), at(R, 16), ALL)
    });
    refused(&mut space, no_dest, |s| {
        s.copy(at(R, ENDPOINT), at(3, 0), ALL)
    });
    let no_src = Error::FailedLookup {
        source: true,
        failure: LookupFailure::InvalidRoot,
    };
    refused(&mut space, no_src, |s| s.copy(at(9, 0), at(R, 10), ALL));
}

#[test]
fn frame_copies_are_unmapped_and_unmapped_tables_cannot_be_copied() {
    let mut space = boot();
    retype(&mut space, at(R, UNTYPED), at(R, 8), ObjectType::Frame4K, 4);
    retype(
        &mut space,
        at(R, UNTYPED),
        at(R, 9),
        ObjectType::PageTable,
        5,
    );
    space
        .set_mapping(at(R, 8), Some(mapping(0x1000)))
        .expect("map frame");
    space.copy(at(R, 8), at(R, 10), ALL).expect("copy frame");
    assert_eq!(space.cap(at(R, 10)).and_then(|c| c.mapping()), None);

    refused(&mut space, Error::IllegalOperation, |s| {
        s.copy(at(R, 9), at(R, 11), ALL)
    });
    refused(&mut space, Error::IllegalOperation, |s| {
        s.mint(at(R, 9), at(R, 11), ALL, CapData::NONE)
    });
    space
        .set_mapping(at(R, 9), Some(mapping(0x20_0000)))
        .expect("map table");
    space
        .copy(at(R, 9), at(R, 11), ALL)
        .expect("copy a mapped table");
    assert_eq!(
        space.cap(at(R, 11)),
        space.cap(at(R, 9)),
        "copies of a table share its mapping"
    );
    // A PML4 is never mapped and always copyable.
    space
        .copy(at(R, VSPACE), at(R, 12), ALL)
        .expect("copy PML4");
    space.check().expect("consistent");
}

// ---- mint ----

#[test]
fn mint_badges_only_an_unbadged_cap() {
    let mut space = boot();
    let badge = |word| CapData { word, index: 5 };
    space
        .mint(at(R, ENDPOINT), at(R, 8), CapRights::WRITE, badge(7))
        .expect("mint");
    assert_eq!(
        space.cap(at(R, 8)),
        Some(Cap::Endpoint {
            id: id(3),
            badge: 7,
            rights: CapRights::WRITE
        })
    );
    refused(&mut space, Error::IllegalOperation, |s| {
        s.mint(at(R, 8), at(R, 9), ALL, badge(8))
    });
    // Data 0 leaves the badge alone.
    space
        .mint(at(R, 8), at(R, 9), ALL, badge(0))
        .expect("mint without a badge");
    assert_eq!(space.cap(at(R, 9)).and_then(|c| c.badge()), Some(7));
    // Data means nothing for an Untyped: it must be 0.
    refused(&mut space, Error::InvalidArgument { index: 5 }, |s| {
        s.mint(at(R, UNTYPED), at(R, 10), ALL, badge(1))
    });
    space
        .mint(at(R, UNTYPED), at(R, 10), ALL, badge(0))
        .expect("mint an Untyped");
}

#[test]
fn mint_sets_a_cnode_guard_that_fits() {
    let mut space = boot();
    retype(&mut space, at(R, UNTYPED), at(R, 8), ObjectType::CNode, 4);
    let guard = GuardData::new(0b101, 3).expect("guard");
    space
        .mint(
            at(R, 8),
            at(R, 9),
            ALL,
            CapData {
                word: guard.word(),
                index: 5,
            },
        )
        .expect("mint");
    assert_eq!(
        space.cap(at(R, 9)),
        Some(Cap::CNode {
            id: id(4),
            radix_bits: 2,
            guard: 0b101,
            guard_bits: 3
        })
    );
    // 63 guard bits beside a radix of 2 is over a word.
    let wide = GuardData::new(0, 63).expect("guard").word();
    refused(&mut space, Error::InvalidArgument { index: 5 }, |s| {
        s.mint(
            at(R, 8),
            at(R, 10),
            ALL,
            CapData {
                word: wide,
                index: 5,
            },
        )
    });
    // A guard that does not fit its size.
    refused(&mut space, Error::InvalidArgument { index: 5 }, |s| {
        s.mint(
            at(R, 8),
            at(R, 10),
            ALL,
            CapData {
                word: 0b11 << 6 | 1,
                index: 5,
            },
        )
    });
}

// ---- move and mutate ----

#[test]
fn move_keeps_the_cap_s_place_in_the_tree() {
    let mut space = boot();
    space.copy(at(R, ENDPOINT), at(R, 8), ALL).expect("copy");
    space.copy(at(R, 8), at(R, 9), ALL).expect("copy");
    space.copy(at(R, 8), at(R, 10), ALL).expect("copy");
    space.move_cap(at(R, 8), at(R, 11)).expect("move");
    assert_eq!(space.cap(at(R, 8)), Some(Cap::Null));
    assert_eq!(space.parent(at(R, 11)), Some(at(R, ENDPOINT)));
    assert_eq!(space.parent(at(R, 9)), Some(at(R, 11)));
    assert_eq!(space.parent(at(R, 10)), Some(at(R, 11)));
    assert_eq!(space.cap_count(id(3)), 4);
    space.check().expect("consistent");
    refused(&mut space, Error::DeleteFirst, |s| {
        s.move_cap(at(R, 11), at(R, 11))
    });
    refused(&mut space, Error::DeleteFirst, |s| {
        s.move_cap(at(R, 11), at(R, 9))
    });
}

#[test]
fn mutate_changes_a_guard_or_badges_a_childless_unbadged_cap() {
    let mut space = boot();
    let data = |word| CapData { word, index: 4 };
    retype(&mut space, at(R, UNTYPED), at(R, 8), ObjectType::CNode, 4);
    let guard = GuardData::new(1, 1).expect("guard").word();
    space
        .mutate(at(R, 8), at(R, 9), data(guard))
        .expect("mutate");
    assert_eq!(
        space.cap(at(R, 9)),
        Some(Cap::CNode {
            id: id(4),
            radix_bits: 2,
            guard: 1,
            guard_bits: 1
        })
    );
    assert_eq!(space.parent(at(R, 9)), Some(at(R, UNTYPED)));

    // An endpoint with a child may not take a badge.
    space.copy(at(R, ENDPOINT), at(R, 10), ALL).expect("copy");
    refused(&mut space, Error::IllegalOperation, |s| {
        s.mutate(at(R, ENDPOINT), at(R, 11), data(5))
    });
    // Without children it may, once.
    space.mutate(at(R, 10), at(R, 11), data(5)).expect("badge");
    assert_eq!(space.cap(at(R, 11)).and_then(|c| c.badge()), Some(5));
    refused(&mut space, Error::IllegalOperation, |s| {
        s.mutate(at(R, 11), at(R, 12), data(6))
    });
    space
        .mutate(at(R, 11), at(R, 12), data(0))
        .expect("a plain move");
    refused(&mut space, Error::InvalidArgument { index: 4 }, |s| {
        s.mutate(at(R, UNTYPED), at(R, 13), data(1))
    });
    space.check().expect("consistent");
}

// ---- delete and revoke ----

#[test]
fn delete_moves_children_up_and_finalises_on_the_last_cap() {
    let mut space = boot();
    let mut fin = Recorder::default();
    space.copy(at(R, ENDPOINT), at(R, 8), ALL).expect("copy");
    space.copy(at(R, 8), at(R, 9), ALL).expect("copy");
    space.copy(at(R, 8), at(R, 10), ALL).expect("copy");
    space.delete(at(R, 8), &mut fin).expect("delete");
    let mut children: Vec<_> = space.children(at(R, ENDPOINT)).collect();
    children.sort();
    assert_eq!(children, [at(R, 9), at(R, 10)]);
    assert!(fin.finalised.is_empty());
    space.check().expect("consistent");

    for slot in [ENDPOINT, 9, 10] {
        space.delete(at(R, slot), &mut fin).expect("delete");
    }
    assert_eq!(
        fin.finalised,
        [(Cap::original(ObjectType::Endpoint, id(3), 0, false), None)]
    );
    assert!(!space.is_live(id(3)));
    // An empty slot is fine; no slot is not.
    space.delete(at(R, 8), &mut fin).expect("empty");
    assert_eq!(
        space.delete(at(R, 99), &mut fin),
        Err(Error::FailedLookup {
            source: false,
            failure: LookupFailure::InvalidRoot
        })
    );
    space.check().expect("consistent");
}

#[test]
fn deleting_mapped_caps_unmaps_frames_always_and_tables_at_the_last_cap() {
    let mut space = boot();
    let mut fin = Recorder::default();
    retype(&mut space, at(R, UNTYPED), at(R, 8), ObjectType::Frame4K, 4);
    retype(
        &mut space,
        at(R, UNTYPED),
        at(R, 9),
        ObjectType::PageTable,
        5,
    );
    space.copy(at(R, 8), at(R, 10), ALL).expect("copy frame");
    space
        .set_mapping(at(R, 8), Some(mapping(0x1000)))
        .expect("map");
    space
        .set_mapping(at(R, 10), Some(mapping(0x2000)))
        .expect("map");
    space
        .set_mapping(at(R, 9), Some(mapping(0x20_0000)))
        .expect("map");
    space.copy(at(R, 9), at(R, 11), ALL).expect("copy table");

    space
        .delete(at(R, 10), &mut fin)
        .expect("delete frame copy");
    assert_eq!(
        fin.unmapped.len(),
        1,
        "a frame cap's own mapping goes with it"
    );
    assert!(fin.finalised.is_empty());
    space.delete(at(R, 9), &mut fin).expect("delete table cap");
    assert_eq!(
        fin.unmapped.len(),
        1,
        "the table is still mapped through its copy"
    );
    space
        .delete(at(R, 11), &mut fin)
        .expect("delete last table cap");
    assert_eq!(fin.unmapped.len(), 2);
    assert_eq!(fin.finalised_ids(), [5]);
    space.check().expect("consistent");
}

#[test]
fn revoke_deletes_every_descendant_but_not_the_cap() {
    let mut space = boot();
    let mut fin = Recorder::default();
    space.copy(at(R, ENDPOINT), at(R, 8), ALL).expect("copy");
    space.copy(at(R, 8), at(R, 9), ALL).expect("copy");
    space.copy(at(R, 9), at(R, 10), ALL).expect("copy");
    space.copy(at(R, ENDPOINT), at(R, 11), ALL).expect("copy");
    space.revoke(at(R, ENDPOINT), &mut fin).expect("revoke");
    assert_eq!(space.children(at(R, ENDPOINT)).count(), 0);
    for slot in [8, 9, 10, 11] {
        assert_eq!(space.cap(at(R, slot)), Some(Cap::Null));
    }
    assert_eq!(space.cap_count(id(3)), 1);
    assert!(fin.finalised.is_empty());
    // Nothing to revoke, or an empty slot, is fine.
    space
        .revoke(at(R, ENDPOINT), &mut fin)
        .expect("revoke again");
    space.revoke(at(R, 8), &mut fin).expect("revoke empty");
    space.check().expect("consistent");
}

#[test]
fn revoking_an_untyped_destroys_what_was_made_from_it() {
    let mut space = boot();
    let mut fin = Recorder::default();
    retype(&mut space, at(R, UNTYPED), at(R, 8), ObjectType::Untyped, 4);
    retype(&mut space, at(R, 8), at(R, 9), ObjectType::Endpoint, 5);
    retype(&mut space, at(R, 8), at(R, 10), ObjectType::CNode, 6);
    retype(&mut space, at(R, UNTYPED), at(R, 11), ObjectType::Tcb, 7);
    // Caps inside the new CNode, derived from the new endpoint.
    space
        .copy(at(R, 9), at(6, 0), ALL)
        .expect("copy into the CNode");
    let before = space.summary();
    space.revoke(at(R, UNTYPED), &mut fin).expect("revoke");
    let mut ids = fin.finalised_ids();
    // The child Untyped goes after the objects charged to it.
    let place = |n| ids.iter().position(|&i| i == n);
    assert!(place(4) > place(5) && place(4) > place(6));
    ids.sort();
    assert_eq!(ids, [4, 5, 6, 7]);
    let charged: Vec<_> = fin
        .finalised
        .iter()
        .map(|(cap, to)| (cap.object().expect("id").0, *to))
        .collect();
    assert!(charged.contains(&(5, Some(id(4)))) && charged.contains(&(4, Some(id(2)))));
    assert_eq!(space.summary().objects, before.objects - 4);
    assert!(space.is_live(id(2)));
    space.check().expect("consistent");
}

#[test]
fn an_untyped_outlives_its_last_cap_while_its_objects_live() {
    let mut space = boot();
    let mut fin = Recorder::default();
    retype(&mut space, at(R, UNTYPED), at(R, 8), ObjectType::Untyped, 4);
    retype(&mut space, at(R, 8), at(R, 9), ObjectType::Notification, 5);
    space
        .delete(at(R, 8), &mut fin)
        .expect("delete the Untyped cap");
    assert!(
        fin.finalised.is_empty(),
        "its notification still uses the budget"
    );
    assert!(space.is_live(id(4)));
    // The notification's cap moved up to the grandparent Untyped cap.
    assert_eq!(space.parent(at(R, 9)), Some(at(R, UNTYPED)));
    space.check().expect("consistent");
    space
        .delete(at(R, 9), &mut fin)
        .expect("delete the notification");
    assert_eq!(fin.finalised_ids(), [5, 4]);
    assert_eq!(fin.finalised[1].1, Some(id(2)));
    space.check().expect("consistent");
}

#[test]
fn destroying_a_cnode_deletes_its_caps_without_recursion() {
    let mut space = boot();
    let mut fin = Recorder::default();
    // A chain of 40 CNodes, each holding the only cap to the next.
    let first = 4;
    retype(
        &mut space,
        at(R, UNTYPED),
        at(R, 8),
        ObjectType::CNode,
        first,
    );
    let last = first + 39;
    for n in first + 1..=last {
        retype(&mut space, at(R, UNTYPED), at(R, 9), ObjectType::CNode, n);
        space
            .move_cap(at(R, 9), at(n - 1, 1))
            .expect("move into the previous CNode");
    }
    // And an endpoint cap at the far end.
    space.copy(at(R, ENDPOINT), at(last, 3), ALL).expect("copy");
    space.check().expect("consistent");
    space
        .delete(at(R, 8), &mut fin)
        .expect("delete the chain's head");
    let mut ids = fin.finalised_ids();
    ids.sort();
    assert_eq!(ids, (first..=last).collect::<Vec<_>>());
    assert_eq!(space.cap_count(id(3)), 1);
    space.check().expect("consistent");
}

#[test]
fn a_cnode_holding_its_own_cap_lives_until_its_untyped_is_revoked() {
    let mut space = boot();
    let mut fin = Recorder::default();
    retype(&mut space, at(R, UNTYPED), at(R, 8), ObjectType::CNode, 4);
    space
        .copy(at(R, 8), at(4, 0), ALL)
        .expect("a cap to itself");
    space
        .delete(at(R, 8), &mut fin)
        .expect("delete the outside cap");
    assert!(fin.finalised.is_empty());
    assert!(space.is_live(id(4)));
    space.revoke(at(R, UNTYPED), &mut fin).expect("revoke");
    assert_eq!(fin.finalised_ids(), [4]);
    space.check().expect("consistent");
}

#[test]
fn revoke_keeps_the_revoked_cap_even_when_its_cnode_dies() {
    // The Untyped cap sits in a CNode made from it; revoking it deletes
    // that CNode's last cap. The CNode goes only after the revoke, and
    // takes the Untyped cap with it.
    let mut space = boot();
    let mut fin = Recorder::default();
    retype(&mut space, at(R, UNTYPED), at(R, 8), ObjectType::Untyped, 4);
    retype(&mut space, at(R, 8), at(R, 9), ObjectType::CNode, 5);
    space
        .move_cap(at(R, 8), at(5, 0))
        .expect("move the Untyped cap into the CNode");
    retype(&mut space, at(5, 0), at(5, 1), ObjectType::Endpoint, 6);
    space.revoke(at(5, 0), &mut fin).expect("revoke");
    assert_eq!(fin.finalised_ids(), [6, 5, 4]);
    assert!(!space.is_live(id(4)) && !space.is_live(id(5)));
    space.check().expect("consistent");
}

// ---- mappings ----

#[test]
fn mappings_change_only_as_the_rules_allow() {
    let mut space = boot();
    retype(&mut space, at(R, UNTYPED), at(R, 8), ObjectType::Frame2M, 4);
    retype(
        &mut space,
        at(R, UNTYPED),
        at(R, 9),
        ObjectType::PageDirectory,
        5,
    );
    // Unmapping an unmapped cap does nothing.
    let before = snapshot(&space);
    space.set_mapping(at(R, 8), None).expect("nothing to unmap");
    assert_eq!(snapshot(&space), before);
    space
        .set_mapping(at(R, 8), Some(mapping(0x20_0000)))
        .expect("map");
    refused(&mut space, Error::InvalidCapability { index: 0 }, |s| {
        s.set_mapping(at(R, 8), Some(mapping(0)))
    });
    space.set_mapping(at(R, 8), None).expect("unmap");

    space
        .set_mapping(at(R, 9), Some(mapping(0x4000_0000)))
        .expect("map table");
    space.copy(at(R, 9), at(R, 10), ALL).expect("copy table");
    refused(&mut space, Error::RevokeFirst, |s| {
        s.set_mapping(at(R, 9), None)
    });
    let mut fin = Recorder::default();
    space.delete(at(R, 10), &mut fin).expect("delete copy");
    assert!(fin.unmapped.is_empty());
    space
        .set_mapping(at(R, 9), None)
        .expect("unmap the last cap");

    for slot in [VSPACE, UNTYPED, ENDPOINT, 11] {
        refused(&mut space, Error::IllegalOperation, |s| {
            s.set_mapping(at(R, slot), Some(mapping(0)))
        });
    }
}

#[test]
fn a_dead_vspace_s_mappings_are_forgotten_and_its_tables_not_mapped_twice() {
    let mut space = boot();
    let mut fin = Recorder::default();
    retype(&mut space, at(R, UNTYPED), at(R, 8), ObjectType::Pml4, 4);
    retype(
        &mut space,
        at(R, UNTYPED),
        at(R, 9),
        ObjectType::PageTable,
        5,
    );
    retype(
        &mut space,
        at(R, UNTYPED),
        at(R, 10),
        ObjectType::Frame4K,
        6,
    );
    let into = |vaddr| Mapping {
        vspace: id(4),
        vaddr,
    };
    // Only a live PML4 is a VSpace.
    refused(&mut space, Error::InvalidCapability { index: 1 }, |s| {
        s.set_mapping(
            at(R, 10),
            Some(Mapping {
                vspace: id(5),
                vaddr: 0,
            }),
        )
    });
    space
        .set_mapping(at(R, 9), Some(into(0)))
        .expect("map table");
    space
        .set_mapping(at(R, 10), Some(into(0x1000)))
        .expect("map frame");
    space
        .copy(at(R, 9), at(R, 11), ALL)
        .expect("copy the mapped table");

    space.delete(at(R, 8), &mut fin).expect("delete the VSpace");
    assert_eq!(fin.finalised_ids(), [4]);
    assert!(
        fin.unmapped.is_empty(),
        "the kernel tears the space down whole"
    );
    for slot in [9, 10, 11] {
        assert_eq!(space.cap(at(R, slot)).and_then(|c| c.mapping()), None);
    }
    space.check().expect("consistent");
    // The table has two caps: neither may map it now.
    refused(&mut space, Error::RevokeFirst, |s| {
        s.set_mapping(at(R, 9), Some(mapping(0)))
    });
    space.delete(at(R, 11), &mut fin).expect("delete the copy");
    space
        .set_mapping(at(R, 9), Some(mapping(0)))
        .expect("map the last cap");
    space.check().expect("consistent");
}

// ---- frames and tables stay apart ----

#[test]
fn no_operation_turns_a_table_into_a_frame_or_back() {
    let mut space = boot();
    let mut fin = Recorder::default();
    retype(
        &mut space,
        at(R, UNTYPED),
        at(R, 8),
        ObjectType::PageTable,
        4,
    );
    retype(&mut space, at(R, UNTYPED), at(R, 9), ObjectType::Frame4K, 5);
    space.set_mapping(at(R, 8), Some(mapping(0))).expect("map");
    let table = |cap: Option<Cap>| matches!(cap, Some(Cap::PagingStructure { .. }));
    let frame = |cap: Option<Cap>| matches!(cap, Some(Cap::Frame { .. }));
    space.copy(at(R, 8), at(R, 10), ALL).expect("copy");
    space
        .mint(at(R, 8), at(R, 11), CapRights::READ, CapData::NONE)
        .expect("mint");
    space
        .mutate(at(R, 11), at(R, 12), CapData::NONE)
        .expect("mutate");
    space
        .copy(at(R, 9), at(R, 13), CapRights::READ)
        .expect("copy");
    space
        .mint(at(R, 9), at(R, 14), ALL, CapData::NONE)
        .expect("mint");
    space.move_cap(at(R, 14), at(R, 15)).expect("move");
    for slot in [8, 10, 12] {
        assert!(table(space.cap(at(R, slot))));
        assert_eq!(
            space
                .cap(at(R, slot))
                .and_then(|c| c.object_type())
                .map(ObjectType::is_frame),
            Some(false)
        );
    }
    for slot in [9, 13, 15] {
        assert!(frame(space.cap(at(R, slot))));
    }
    // Data cannot smuggle one into the other either.
    refused(&mut space, Error::InvalidArgument { index: 5 }, |s| {
        s.mint(at(R, 8), at(R, 11), ALL, CapData { word: 1, index: 5 })
    });
    // Nor can a new cap claim a live object's id with another type.
    let fake = Cap::original(ObjectType::Frame4K, id(4), 0, false);
    let refusal = space
        .insert_child(at(R, UNTYPED), at(R, 11), fake, None)
        .expect_err("id in use");
    assert_eq!(refusal.error, InsertError::IdInUse);
    space.revoke(at(R, UNTYPED), &mut fin).expect("revoke");
    space.check().expect("consistent");
}

// ---- making the CSpace ----

#[test]
fn new_takes_only_free_records_and_their_number_is_the_capacity() {
    assert_eq!(empty_space().capacity(), OBJECTS);
    let cnode = |n| Cap::CNode {
        id: id(n),
        radix_bits: 2,
        guard: 0,
        guard_bits: 0,
    };
    let mut none = Space::new(Vec::new()).expect("no records");
    assert_eq!(none.capacity(), 0);
    let refusal = none
        .insert_original(at(0, 0), cnode(0), Some(slots(2)))
        .expect_err("no id below a capacity of 0");
    assert_eq!(refusal.error, InsertError::IdOutOfRange);

    // Borrowed storage outlives the CSpace: records a dead object used
    // are free again, a live object's are not (the last id, so every
    // record is looked at).
    let mut records = records();
    let last = OBJECTS as u32 - 1;
    let mut fin = Recorder::default();
    let mut space = CSpace::new(&mut records[..]).expect("free records");
    space
        .insert_original(at(last, 0), cnode(last), Some(slots(2)))
        .expect("CNode");
    space.delete(at(last, 0), &mut fin).expect("delete");
    assert_eq!(fin.finalised_ids(), [last]);
    let mut space = CSpace::new(&mut records[..]).expect("free again");
    space
        .insert_original(at(last, 0), cnode(last), Some(slots(2)))
        .expect("CNode");
    let back = CSpace::<Vec<Slot>, _>::new(&mut records[..])
        .err()
        .expect("a live record refused");
    assert_eq!(back.len(), OBJECTS, "the storage handed back");
    // Storage of u32::MAX records or more is refused too; no host test
    // can afford it.
}

// ---- inserting ----

/// Parent, destination, cap, memory, and the refusal expected.
type InsertCase = (SlotRef, SlotRef, Cap, Option<Vec<Slot>>, InsertError);

#[test]
fn inserts_refuse_bad_requests_and_hand_the_memory_back() {
    let mut space = boot();
    let cnode = |n, radix| Cap::CNode {
        id: id(n),
        radix_bits: radix,
        guard: 0,
        guard_bits: 0,
    };
    let cases: Vec<InsertCase> = vec![
        (
            at(R, UNTYPED),
            at(R, 8),
            Cap::Null,
            None,
            InsertError::NullCap,
        ),
        (
            at(R, UNTYPED),
            at(R, 8),
            Cap::Tcb {
                id: id(OBJECTS as u32),
            },
            None,
            InsertError::IdOutOfRange,
        ),
        (
            at(R, UNTYPED),
            at(R, 8),
            Cap::Tcb { id: id(3) },
            None,
            InsertError::IdInUse,
        ),
        (
            at(R, UNTYPED),
            at(R, 8),
            cnode(4, 0),
            Some(slots(0)),
            InsertError::BadCap,
        ),
        (
            at(R, UNTYPED),
            at(R, 8),
            cnode(4, 2),
            Some(slots(3)),
            InsertError::BadMemory,
        ),
        (
            at(R, UNTYPED),
            at(R, 8),
            cnode(4, 2),
            None,
            InsertError::BadMemory,
        ),
        (
            at(R, UNTYPED),
            at(R, 8),
            Cap::Untyped { id: id(4) },
            Some(slots(1)),
            InsertError::BadMemory,
        ),
        (
            at(R, ENDPOINT),
            at(R, 8),
            Cap::Tcb { id: id(4) },
            None,
            InsertError::NotUntyped,
        ),
        (
            at(R, 9),
            at(R, 8),
            Cap::Tcb { id: id(4) },
            None,
            InsertError::NotUntyped,
        ),
        (
            at(R, 99),
            at(R, 8),
            Cap::Tcb { id: id(4) },
            None,
            InsertError::NoSuchSlot,
        ),
        (
            at(R, UNTYPED),
            at(R, ENDPOINT),
            Cap::Tcb { id: id(4) },
            None,
            InsertError::NotEmpty,
        ),
        (
            at(R, UNTYPED),
            at(9, 0),
            Cap::Tcb { id: id(4) },
            None,
            InsertError::NoSuchSlot,
        ),
    ];
    for (parent, dest, cap, memory, error) in cases {
        let had_memory = memory.is_some();
        let before = snapshot(&space);
        let refusal = space
            .insert_child(parent, dest, cap, memory)
            .expect_err("refused");
        assert_eq!(refusal.error, error, "{cap:?}");
        assert_eq!(
            refusal.memory.is_some(),
            had_memory,
            "the memory comes back"
        );
        assert_eq!(snapshot(&space), before);
    }
    // A retyped object is never mapped already (a boot one may be).
    let mapped = Cap::PagingStructure {
        id: id(5),
        level: PagingLevel::Pt,
        mapped: Some(mapping(0)),
    };
    let refusal = space
        .insert_child(at(R, UNTYPED), at(R, 9), mapped, None)
        .expect_err("mapped");
    assert_eq!(refusal.error, InsertError::BadCap);
    let astray = Cap::PagingStructure {
        id: id(5),
        level: PagingLevel::Pt,
        mapped: Some(Mapping {
            vspace: id(3),
            vaddr: 0,
        }),
    };
    let refusal = space
        .insert_original(at(R, 9), astray, None)
        .expect_err("into an endpoint");
    assert_eq!(refusal.error, InsertError::BadCap);
    space
        .insert_original(at(R, 9), mapped, None)
        .expect("a boot table is mapped already");
    // A TCB may hold slots.
    space
        .insert_child(
            at(R, UNTYPED),
            at(R, 10),
            Cap::Tcb { id: id(6) },
            Some(slots(2)),
        )
        .expect("TCB with slots");
    assert_eq!(space.slot_count(id(6)), 4);
    space
        .copy(at(R, VSPACE), at(6, 1), ALL)
        .expect("a cap into the TCB's slot");
    space.check().expect("consistent");
}

// ---- whole invocations ----

/// Invokes a CNode operation from message words on the root CNode, with
/// the root CNode as extra cap 0.
fn invoke(space: &mut Space, label: InvocationLabel, args: &[u64]) -> Result<(), Error> {
    let mut fin = Recorder::default();
    let op = CNodeOp::decode(label, args, &[root_cap()])?;
    space.invoke_cnode(&root_cap(), op, &mut fin)
}

#[test]
fn cnode_invocations_resolve_their_slots_and_report_lookups() {
    use InvocationLabel::*;
    let mut space = boot();
    invoke(
        &mut space,
        CNodeCopy,
        &[8, 64, ENDPOINT as u64, 64, ALL.word()],
    )
    .expect("copy");
    assert_eq!(space.parent(at(R, 8)), Some(at(R, ENDPOINT)));
    invoke(
        &mut space,
        CNodeMint,
        &[9, 64, 8, 64, CapRights::WRITE.word(), 77],
    )
    .expect("mint");
    assert_eq!(space.cap(at(R, 9)).and_then(|c| c.badge()), Some(77));
    invoke(&mut space, CNodeMove, &[10, 64, 9, 64]).expect("move");
    invoke(&mut space, CNodeMutate, &[11, 64, 10, 64, 0]).expect("mutate");
    invoke(&mut space, CNodeRevoke, &[ENDPOINT as u64, 64]).expect("revoke");
    assert_eq!(space.cap(at(R, 11)), Some(Cap::Null));
    invoke(&mut space, CNodeDelete, &[ENDPOINT as u64, 64]).expect("delete");
    assert!(!space.is_live(id(3)));
    space.check().expect("consistent");

    let mut space = boot();
    let before = snapshot(&space);
    let cases: [(InvocationLabel, &[u64], Error); 9] = [
        (CNodeCopy, &[8, 64, 7, 64], Error::TruncatedMessage),
        (CNodeMint, &[8, 64, 7, 64, 0], Error::TruncatedMessage),
        (CNodeDelete, &[8], Error::TruncatedMessage),
        (
            CNodeCopy,
            &[8, 0, 7, 64, 0],
            Error::RangeError { min: 1, max: 64 },
        ),
        (
            CNodeCopy,
            &[8, 64, 7, 65, 0],
            Error::RangeError { min: 1, max: 64 },
        ),
        (
            CNodeCopy,
            &[8, 64, 7, 64, 0x10],
            Error::InvalidArgument { index: 4 },
        ),
        (FrameMap, &[0, 0, 0], Error::IllegalOperation),
        (
            // The root's guard needs 60 bits of the 64.
            CNodeCopy,
            &[8, 32, 7, 64, 0],
            Error::FailedLookup {
                source: false,
                failure: LookupFailure::GuardMismatch {
                    bits_left: 32,
                    guard_found: 0,
                    guard_bits: 60,
                },
            },
        ),
        (
            CNodeMove,
            &[8, 64, 1 << 63 | 7, 64],
            Error::FailedLookup {
                source: true,
                failure: LookupFailure::GuardMismatch {
                    bits_left: 64,
                    guard_found: 0,
                    guard_bits: 60,
                },
            },
        ),
    ];
    for (label, args, error) in cases {
        assert_eq!(
            invoke(&mut space, label, args),
            Err(error),
            "{label:?} {args:?}"
        );
        assert_eq!(snapshot(&space), before);
    }
    assert_eq!(
        CNodeOp::decode(CNodeCopy, &[8, 64, 7, 64, 0], &[]),
        Err(Error::TruncatedMessage)
    );
    // A source root that is no CNode.
    let op = CNodeOp::Move {
        dest: Path {
            index: CPtr(8),
            depth: Depth::WORD,
        },
        src_root: Cap::Untyped { id: id(2) },
        src: Path {
            index: CPtr(7),
            depth: Depth::WORD,
        },
    };
    assert_eq!(
        space.invoke_cnode(&root_cap(), op, &mut Recorder::default()),
        Err(Error::FailedLookup {
            source: true,
            failure: LookupFailure::InvalidRoot
        })
    );
}

#[test]
fn summary_counts_caps_objects_and_edges() {
    let mut space = boot();
    space.copy(at(R, ENDPOINT), at(R, 8), ALL).expect("copy");
    retype(&mut space, at(R, UNTYPED), at(R, 9), ObjectType::Tcb, 4);
    let summary = space.summary();
    assert_eq!(summary.caps, 6);
    assert_eq!(summary.objects, 5);
    assert_eq!(summary.edges, 2);
    assert_eq!(summary.caps_by_type[ObjectType::Endpoint.index()], 2);
    assert_eq!(summary.objects_by_type[ObjectType::Tcb.index()], 1);
    assert!(space.is_final(at(R, 9)) && !space.is_final(at(R, 8)));
}
