//! Every ABI word survives encode then decode, and every bad word is
//! refused with its typed error, never a panic: checked over all values
//! where they are few and by proptest where they are not.

use abi::bootinfo::{BootInfo, FIRST_UNTYPED_SLOT, InitCap, MAX_BOOT_UNTYPED, SlotRegion};
use abi::object::{CNODE_MAX_RADIX, SLOT_SIZE_BITS};
use abi::*;
use proptest::prelude::*;

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

// ---- numbered enums ----

#[test]
fn syscall_numbers_round_trip_and_unknown_ones_are_refused() {
    for &call in Syscall::ALL {
        assert_eq!(Syscall::try_from(call.number()), Ok(call));
        assert_eq!(u64::from(call), call as u64);
    }
    assert_eq!(Syscall::ALL.len(), 12);
    for bad in [0, 9, 0xff, 0x104, u64::MAX] {
        assert_eq!(Syscall::try_from(bad), Err(DecodeError::Syscall(bad)));
    }
    assert!(Syscall::DebugExit.is_debug() && !Syscall::Call.is_debug());
}

#[test]
fn invocation_labels_round_trip_and_unknown_ones_are_refused() {
    for &label in InvocationLabel::ALL {
        assert_eq!(InvocationLabel::try_from(label.number()), Ok(label));
        // Each label applies to at least one object type.
        assert!(ObjectType::ALL.iter().any(|&ty| label.applies_to(ty)));
        // A label always fits a message label.
        assert!(MessageInfo::with_label(label.number(), 0).is_ok());
    }
    assert_eq!(InvocationLabel::ALL.len(), 20);
    for bad in [0, 21, u64::MAX] {
        assert_eq!(
            InvocationLabel::try_from(bad),
            Err(DecodeError::InvocationLabel(bad))
        );
    }
    assert!(!InvocationLabel::PageTableMap.applies_to(ObjectType::Pml4));
    assert!(InvocationLabel::PageTableMap.applies_to(ObjectType::Pdpt));
    assert!(!InvocationLabel::FrameMap.applies_to(ObjectType::PageTable));
    assert!(!InvocationLabel::PageTableMap.applies_to(ObjectType::Frame4K));
}

#[test]
fn object_types_round_trip_and_know_their_sizes() {
    for (i, &ty) in ObjectType::ALL.iter().enumerate() {
        assert_eq!(ObjectType::try_from(ty.number()), Ok(ty));
        assert_eq!(ty.index(), i);
        assert!(!(ty.is_frame() && ty.is_paging_structure()));
    }
    assert_eq!(ObjectType::COUNT, 11);
    assert_eq!(ObjectType::try_from(11), Err(DecodeError::ObjectType(11)));
    assert_eq!(ObjectType::Tcb.size_bits(0), Ok(11));
    assert_eq!(ObjectType::Frame2M.size_bits(99), Ok(21));
    assert_eq!(ObjectType::Pml4.size_bits(0), Ok(12));
    assert_eq!(ObjectType::CNode.size_bits(4), Ok(4 + SLOT_SIZE_BITS));
    assert_eq!(ObjectType::Untyped.size_bits(20), Ok(20));
    assert_eq!(
        ObjectType::CNode.size_bits(0),
        Err(Error::RangeError {
            min: 1,
            max: CNODE_MAX_RADIX as u64
        })
    );
    assert_eq!(
        ObjectType::CNode.size_bits(u64::MAX),
        Err(Error::RangeError {
            min: 1,
            max: CNODE_MAX_RADIX as u64
        })
    );
    assert_eq!(
        ObjectType::Untyped.size_bits(3),
        Err(Error::RangeError { min: 4, max: 47 })
    );
    assert_eq!(ObjectType::PageTable.paging_level(), Some(1));
    assert_eq!(ObjectType::Pml4.paging_level(), Some(4));
    assert_eq!(ObjectType::Frame4K.paging_level(), None);
}

// ---- rights, depth, guard data, flags ----

#[test]
fn rights_words_round_trip_and_unknown_bits_are_refused() {
    for word in 0..16 {
        let rights = CapRights::from_word(word).expect("four defined bits");
        assert_eq!(rights.word(), word);
    }
    assert_eq!(CapRights::all().word(), 0xf);
    for bad in [16, 0x11, 0x100, 1 << 63] {
        assert_eq!(CapRights::from_word(bad), Err(DecodeError::Rights(bad)));
    }
}

#[test]
fn depths_are_zero_to_sixty_four() {
    for bits in 0..=64 {
        assert_eq!(Depth::new(bits).map(Depth::bits), Ok(bits as u8));
    }
    for bad in [65, 256, u64::MAX] {
        assert_eq!(Depth::try_from(bad), Err(DecodeError::Depth(bad)));
    }
    assert_eq!(Depth::WORD.bits(), 64);
}

#[test]
fn flags_words_refuse_unknown_bits() {
    assert_eq!(RetypeFlags::from_word(1), Ok(RetypeFlags::SECRET));
    assert_eq!(RetypeFlags::from_word(2), Err(DecodeError::RetypeFlags(2)));
    assert_eq!(MapAttributes::from_word(1), Ok(MapAttributes::EXECUTE));
    assert_eq!(
        MapAttributes::from_word(4),
        Err(DecodeError::MapAttributes(4))
    );
}

#[test]
fn guard_data_refuses_a_guard_wider_than_its_size() {
    assert_eq!(GuardData::from_word(0), Ok(GuardData::NONE));
    let data = GuardData::new(0b101, 3).expect("fits");
    assert_eq!(GuardData::from_word(data.word()), Ok(data));
    assert!(GuardData::new(0b1000, 3).is_err());
    assert!(GuardData::new(0, 64).is_err());
    assert!(GuardData::new(1 << 58, 63).is_err());
    assert!(GuardData::new((1 << 58) - 1, 63).is_ok());
    // Guard 0b11 with size 1.
    assert_eq!(
        GuardData::from_word(0b11 << 6 | 1),
        Err(DecodeError::GuardData(0b11 << 6 | 1))
    );
}

proptest! {
    #![proptest_config(proptest_config(256))]

    #[test]
    fn guard_data_words_decode_canonically(word in any::<u64>()) {
        if let Ok(data) = GuardData::from_word(word) {
            prop_assert_eq!(data.word(), word);
            prop_assert!(data.bits() >= 64 || data.guard() >> data.bits() == 0);
        }
    }

    #[test]
    fn guard_data_round_trips(bits in 0u8..64, guard in any::<u64>()) {
        let guard = if bits == 0 { 0 } else { guard >> (64 - bits as u32) } & ((1 << 58) - 1);
        let data = GuardData::new(guard, bits).expect("in range");
        prop_assert_eq!(GuardData::from_word(data.word()), Ok(data));
    }
}

// ---- message info ----

#[test]
fn message_info_layout_is_pinned() {
    let info = MessageInfo::new(0xabc, 0b101, 3, 120).expect("valid");
    assert_eq!(info.word(), 0xabc << 12 | 0b101 << 9 | 3 << 7 | 120);
    assert_eq!(MessageInfo::EMPTY.word(), 0);
    assert_eq!(
        MessageInfo::new(MessageInfo::MAX_LABEL, 0, 0, 0).map(MessageInfo::word),
        Ok(MessageInfo::MAX_LABEL << 12)
    );
}

#[test]
fn message_info_refuses_bad_fields() {
    assert_eq!(
        MessageInfo::new(1 << 52, 0, 0, 0),
        Err(DecodeError::Label(1 << 52))
    );
    assert_eq!(
        MessageInfo::new(0, 0, 0, 121),
        Err(DecodeError::MessageLength(121))
    );
    assert_eq!(MessageInfo::new(0, 0, 4, 0), Err(DecodeError::ExtraCaps(4)));
    assert_eq!(
        MessageInfo::new(0, 0b100, 2, 0),
        Err(DecodeError::CapsUnwrapped(0b100))
    );
    assert_eq!(
        MessageInfo::from_word(127),
        Err(DecodeError::MessageLength(127))
    );
    assert_eq!(
        MessageInfo::from_word(1 << 9),
        Err(DecodeError::CapsUnwrapped(1))
    );
}

proptest! {
    #![proptest_config(proptest_config(512))]

    #[test]
    fn message_info_round_trips(
        label in 0..=MessageInfo::MAX_LABEL,
        extra in 0u8..=3,
        unwrapped in 0u8..8,
        length in 0u8..=120,
    ) {
        let unwrapped = unwrapped & ((1 << extra) - 1);
        let info = MessageInfo::new(label, unwrapped, extra, length).expect("valid fields");
        prop_assert_eq!(info.label(), label);
        prop_assert_eq!(info.extra_caps(), extra);
        prop_assert_eq!(info.caps_unwrapped(), unwrapped);
        prop_assert_eq!(info.length(), length);
        prop_assert_eq!(MessageInfo::from_word(info.word()), Ok(info));
    }

    /// Any word decodes to the message it spells, or is refused.
    #[test]
    fn message_info_words_decode_canonically(word in any::<u64>()) {
        match MessageInfo::from_word(word) {
            Ok(info) => prop_assert_eq!(info.word(), word),
            Err(e) => prop_assert!(matches!(
                e,
                DecodeError::MessageLength(_) | DecodeError::CapsUnwrapped(_)
            )),
        }
    }
}

// ---- errors ----

fn bits() -> impl Strategy<Value = u8> {
    0u8..=64
}

fn lookup_failure() -> impl Strategy<Value = LookupFailure> {
    prop_oneof![
        Just(LookupFailure::InvalidRoot),
        bits().prop_map(|bits_left| LookupFailure::MissingCapability { bits_left }),
        (bits(), bits()).prop_map(|(bits_resolved, bits_left)| LookupFailure::DepthMismatch {
            bits_resolved,
            bits_left
        }),
        (bits(), any::<u64>(), bits()).prop_map(|(bits_left, guard_found, guard_bits)| {
            LookupFailure::GuardMismatch {
                bits_left,
                guard_found,
                guard_bits,
            }
        }),
    ]
}

fn error() -> impl Strategy<Value = Error> {
    prop_oneof![
        any::<u8>().prop_map(|index| Error::InvalidArgument { index }),
        any::<u8>().prop_map(|index| Error::InvalidCapability { index }),
        Just(Error::IllegalOperation),
        (any::<u64>(), any::<u64>()).prop_map(|(min, max)| Error::RangeError { min, max }),
        Just(Error::AlignmentError),
        (any::<bool>(), lookup_failure())
            .prop_map(|(source, failure)| Error::FailedLookup { source, failure }),
        Just(Error::TruncatedMessage),
        Just(Error::DeleteFirst),
        Just(Error::RevokeFirst),
        any::<u64>().prop_map(|bytes_available| Error::NotEnoughMemory { bytes_available }),
    ]
}

proptest! {
    #![proptest_config(proptest_config(1024))]

    #[test]
    fn errors_round_trip(error in error()) {
        let encoded = error.encode();
        prop_assert_ne!(encoded.code, 0);
        prop_assert!(encoded.length as usize <= MSG_REGISTERS);
        prop_assert!(encoded.words[encoded.length as usize..].iter().all(|&w| w == 0));
        prop_assert_eq!(Error::decode(encoded.code, encoded.used()), Ok(error));
        // Through a reply's message-info word and registers.
        let info = MessageInfo::from_word(encoded.info().word()).expect("valid info");
        prop_assert_eq!(info.label(), error.code());
        prop_assert_eq!(Error::from_reply(info, &encoded.words), Ok(Err(error)));
    }

    /// Any label and words decode to the error they spell, or are refused.
    #[test]
    fn error_words_decode_canonically(
        code in 0u64..12,
        words in prop::collection::vec(
            prop_oneof![0u64..70, 0x100u64..0x106, any::<u64>()], 0..6),
    ) {
        if let Ok(error) = Error::decode(code, &words) {
            let encoded = error.encode();
            prop_assert_eq!(encoded.code, code);
            prop_assert_eq!(encoded.used(), &words[..]);
        }
    }
}

#[test]
fn every_error_variant_has_its_table_code() {
    let failure = LookupFailure::InvalidRoot;
    let cases = [
        (Error::InvalidArgument { index: 0 }, 1, 1),
        (Error::InvalidCapability { index: 0 }, 2, 1),
        (Error::IllegalOperation, 3, 0),
        (Error::RangeError { min: 0, max: 0 }, 4, 2),
        (Error::AlignmentError, 5, 0),
        (
            Error::FailedLookup {
                source: true,
                failure,
            },
            6,
            1,
        ),
        (Error::TruncatedMessage, 7, 0),
        (Error::DeleteFirst, 8, 0),
        (Error::RevokeFirst, 9, 0),
        (Error::NotEnoughMemory { bytes_available: 0 }, 10, 1),
    ];
    for (error, code, length) in cases {
        assert_eq!(error.code(), code, "{error:?}");
        assert_eq!(error.encode().length, length, "{error:?}");
    }
    let guard = Error::FailedLookup {
        source: true,
        failure: LookupFailure::GuardMismatch {
            bits_left: 64,
            guard_found: 7,
            guard_bits: 3,
        },
    };
    assert_eq!(guard.encode().words, [0x104, 64, 7, 3]);
    assert_eq!(
        Error::from(LookupFailure::InvalidRoot),
        Error::FailedLookup {
            source: false,
            failure: LookupFailure::InvalidRoot
        }
    );
}

#[test]
fn bad_error_replies_are_refused() {
    use DecodeError::*;
    assert_eq!(Error::decode(0, &[]), Err(ErrorCode(0)));
    assert_eq!(Error::decode(11, &[]), Err(ErrorCode(11)));
    assert_eq!(Error::decode(u64::MAX, &[]), Err(ErrorCode(u64::MAX)));
    assert_eq!(
        Error::decode(1, &[]),
        Err(ErrorLength {
            expected: 1,
            found: 0
        })
    );
    assert_eq!(
        Error::decode(3, &[0]),
        Err(ErrorLength {
            expected: 0,
            found: 1
        })
    );
    assert_eq!(
        Error::decode(1, &[256]),
        Err(ErrorWord {
            index: 0,
            value: 256
        })
    );
    assert_eq!(
        Error::decode(6, &[]),
        Err(ErrorLength {
            expected: 1,
            found: 0
        })
    );
    // Unknown failure kinds, stray bits beside the source flag.
    for head in [0, 5, 0x105, 0x200, 0x1_0001] {
        assert_eq!(
            Error::decode(6, &[head]),
            Err(ErrorWord {
                index: 0,
                value: head
            })
        );
    }
    // A bit count above 64.
    assert_eq!(
        Error::decode(6, &[2, 65]),
        Err(ErrorWord {
            index: 1,
            value: 65
        })
    );
    assert_eq!(
        Error::decode(6, &[4, 3, 0, 65]),
        Err(ErrorWord {
            index: 3,
            value: 65
        })
    );
    // A reply of more words than any error has.
    let info = MessageInfo::with_label(1, 5).expect("valid");
    assert_eq!(
        Error::from_reply(info, &[0; 4]),
        Err(ErrorLength {
            expected: 4,
            found: 5
        })
    );
    assert_eq!(Error::from_reply(MessageInfo::EMPTY, &[9; 4]), Ok(Ok(())));
}

// ---- layouts ----

#[test]
fn ipc_buffer_and_context_layouts() {
    assert_eq!(core::mem::size_of::<IpcBuffer>(), 1024);
    assert_eq!(1 << IPC_BUFFER_SIZE_BITS, 1024);
    let mut buffer = IpcBuffer::new();
    buffer.tag = MessageInfo::new(5, 0, 1, 7).expect("valid").word();
    assert_eq!(buffer.info().map(MessageInfo::length), Ok(7));
    buffer.tag = 127;
    assert_eq!(buffer.info(), Err(DecodeError::MessageLength(127)));

    let words: [u64; UserContext::WORDS] = core::array::from_fn(|i| i as u64 * 3 + 1);
    let context = UserContext::from_words(&words);
    assert_eq!(context.rip, 1);
    assert_eq!(context.gs_base, 19 * 3 + 1);
    assert_eq!(context.to_words(), words);
}

fn boot_info() -> BootInfo {
    let mut untyped_bytes = [0; MAX_BOOT_UNTYPED];
    untyped_bytes[..2].copy_from_slice(&[1 << 20, 1 << 16]);
    BootInfo {
        magic: BootInfo::MAGIC,
        node_id: 0,
        node_count: 1,
        ipc_buffer: 0x40_0000,
        root_cnode_radix: 12,
        untyped: SlotRegion {
            start: FIRST_UNTYPED_SLOT,
            end: FIRST_UNTYPED_SLOT + 2,
        },
        mappings: SlotRegion {
            start: FIRST_UNTYPED_SLOT + 2,
            end: FIRST_UNTYPED_SLOT + 5,
        },
        empty: SlotRegion {
            start: FIRST_UNTYPED_SLOT + 5,
            end: 1 << 12,
        },
        untyped_bytes,
        image_start: 0x20_0000,
        image_end: 0x30_0000,
    }
}

#[test]
fn boot_info_checks_its_magic_and_regions() {
    assert!(core::mem::size_of::<BootInfo>() <= 4096);
    assert_eq!(BootInfo::MAGIC & 0xffff, BootInfo::VERSION);
    let info = boot_info();
    assert_eq!(info.check(), Ok(()));
    assert_eq!(
        info.untyped_budgets().collect::<Vec<_>>(),
        [(6, 1 << 20), (7, 1 << 16)]
    );
    assert_eq!(InitCap::InitThreadCNode.cptr(), CPtr(2));
    assert_eq!(InitCap::ALL.map(InitCap::slot), [0, 1, 2, 3, 4, 5]);

    let mut bad = boot_info();
    bad.magic ^= 1;
    assert_eq!(bad.check(), Err(DecodeError::BootInfoMagic(bad.magic)));
    let broken: [fn(&mut BootInfo); 9] = [
        |b| b.empty.end = (1 << 12) + 1,
        |b| b.untyped.start = 5,
        |b| b.empty.start += 1,
        |b| b.untyped_bytes[2] = 1,
        |b| b.node_id = 1,
        |b| b.root_cnode_radix = 64,
        |b| {
            b.untyped.end = FIRST_UNTYPED_SLOT + MAX_BOOT_UNTYPED as u64 + 1;
            b.mappings.start = b.untyped.end;
        },
        |b| b.mappings.start += 1,
        |b| {
            b.mappings.end = b.mappings.start - 1;
            b.empty.start = b.mappings.end;
        },
    ];
    for breaks in broken {
        let mut bad = boot_info();
        breaks(&mut bad);
        assert_eq!(bad.check(), Err(DecodeError::BootInfoLayout), "{bad:?}");
    }
}
