//! Arrays of kernel data in frames the page allocator hands out: the
//! kernel object layer's tables and CNode slots, which are too large for
//! the kernel image (its size decides the memory the kernel needs to boot,
//! `boot::layout::MIN_MEMORY`) or the
//! boot stack.
//!
//! Owns the one conversion from an owned [`Frame`] to a typed slice.
//! Promises:
//! - the memory is kernel-object memory ([`KERNEL_OBJECTS`]: unmovable,
//!   mapped in the direct map with the default key), so compaction never
//!   moves it and the direct map reaches it without a window; or, with
//!   [`FrameArray::new_in`], an unmovable keyed freetype of an object
//!   class (`object::protection`), which its owner writes only inside the
//!   class's window;
//! - every element is written before the slice exists, and dropped before
//!   the frames go back;
//! - the array is the frames' only owner: the slice lives exactly as long
//!   as the [`FrameArray`], and dropping it frees the block.

use super::direct_map::DIRECT_MAP_BASE;
use super::frames::{self, Frame, FrameError};
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use ptalloc::{Freetype, Mobility, Protection};

/// Kernel objects: unmovable, in the direct map.
pub const KERNEL_OBJECTS: Freetype = Freetype {
    mobility: Mobility::Unmovable,
    protection: Protection::Mapped,
};

const PAGE: usize = 4096;

/// `len` values of `T` in one block of frames.
pub struct FrameArray<T> {
    frame: Frame,
    len: usize,
    _values: PhantomData<T>,
}

impl<T> FrameArray<T> {
    /// An array of `len` elements, element `i` being `fill(i)`, in the
    /// smallest block of [`KERNEL_OBJECTS`] frames that holds it (a page
    /// at least). Too large for any block is `OutOfMemory`.
    pub fn new(len: usize, fill: impl FnMut(usize) -> T) -> Result<Self, FrameError> {
        Self::new_in(KERNEL_OBJECTS, len, fill)
    }

    /// As [`new`](Self::new), in frames of `freetype`: an unmovable
    /// freetype in the direct map, `Mapped` or keyed. For a keyed one the
    /// caller holds its key's window open (the elements are written
    /// here), as it must for every later write.
    pub fn new_in(
        freetype: Freetype,
        len: usize,
        mut fill: impl FnMut(usize) -> T,
    ) -> Result<Self, FrameError> {
        const { assert!(core::mem::align_of::<T>() <= PAGE) };
        let too_big = FrameError::Alloc(ptalloc::AllocError::OutOfMemory);
        let bytes = len
            .checked_mul(core::mem::size_of::<T>())
            .ok_or(too_big)?
            .max(1);
        let pages = bytes.div_ceil(PAGE);
        let order = pages.next_power_of_two().trailing_zeros();
        if order > ptalloc::MAX_ORDER {
            return Err(too_big);
        }
        if freetype.mobility != Mobility::Unmovable || freetype.protection == Protection::Unmapped {
            return Err(FrameError::NotKernelMemory);
        }
        let frame = frames::alloc_frame(order, freetype, false)?;
        // The allocator's metadata is ordinary memory; the sealed record
        // says whether a keyed block really carries its key (as `paging`
        // checks its tables).
        if let Protection::Pkey(_) = freetype.protection {
            let bytes = PAGE as u64 * (1 << order);
            let first = frame.addr() & !(ptalloc::PAGEBLOCK_SIZE - 1);
            let keyed = (first..frame.addr() + bytes)
                .step_by(ptalloc::PAGEBLOCK_SIZE as usize)
                .all(|at| super::sealed::protection(at) == freetype.protection);
            if !keyed {
                panic!(
                    "the allocator handed out {:#x} as {:?} memory, which the sealed record does not give that key: its metadata was tampered with",
                    frame.addr(),
                    freetype.protection
                );
            }
        }
        let base = Self::base(&frame);
        for index in 0..len {
            // SAFETY: the block is ours alone (an owned Frame), unmovable
            // memory the direct map maps, writable with the default key or
            // inside the key's window the caller holds; `index < len` keeps the write inside
            // the `bytes` the block holds, and the base is page aligned.
            unsafe { base.add(index).write(fill(index)) };
        }
        Ok(Self {
            frame,
            len,
            _values: PhantomData,
        })
    }

    fn base(frame: &Frame) -> *mut T {
        (DIRECT_MAP_BASE + frame.addr()) as *mut T
    }

    /// Bytes of frames the array occupies.
    pub fn footprint(&self) -> u64 {
        (PAGE as u64) << self.frame.order()
    }
}

impl<T> Deref for FrameArray<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: `new` wrote all `len` elements into the block, which this
        // array owns and keeps mapped (KERNEL_OBJECTS pageblocks never
        // change freetype while a frame in them is allocated).
        unsafe { core::slice::from_raw_parts(Self::base(&self.frame), self.len) }
    }
}

impl<T> DerefMut for FrameArray<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; `&mut self` makes the access exclusive.
        unsafe { core::slice::from_raw_parts_mut(Self::base(&self.frame), self.len) }
    }
}

impl<T> Drop for FrameArray<T> {
    fn drop(&mut self) {
        // SAFETY: every element was written by `new` and is dropped once,
        // here; the frames are freed after, when `frame` drops.
        unsafe { core::ptr::drop_in_place(self.deref_mut() as *mut [T]) };
    }
}

crate::kernel_test! {
    /// An array writes and reads back its elements, drops each once, and
    /// gives its frames back when dropped.
    fn frame_arrays_hold_their_elements() -> TestResult {
        use core::sync::atomic::{AtomicUsize, Ordering};
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct Counted(usize);
        impl Drop for Counted {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::Relaxed);
            }
        }
        let before = frames::frames_not_held();
        DROPS.store(0, Ordering::Relaxed);
        let len = 3 * PAGE / core::mem::size_of::<Counted>();
        let mut array = FrameArray::new(len, Counted).map_err(|e| crate::testing::TestFailure::because(&e))?;
        crate::check!(array.footprint() == 4 * PAGE as u64, "footprint {}", array.footprint());
        crate::check!(array.iter().enumerate().all(|(i, c)| c.0 == i), "elements not as filled");
        array[7].0 = 70;
        crate::check!(array[7].0 == 70, "write lost");
        drop(array);
        crate::check!(DROPS.load(Ordering::Relaxed) == len, "{} drops of {}", DROPS.load(Ordering::Relaxed), len);
        crate::check!(frames::frames_not_held() == before, "frames not given back");
        Ok(())
    }
}
